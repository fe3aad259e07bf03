"""The `train` flow end to end on the local backend: real 2-rank DeepSpeed jobs on CPU
(model.train under torchrun), real S3 server, Prefect's test harness."""

from __future__ import annotations

import json
import math
import re
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from flows.train import TrainParameters, train
from infra.backends import JOB_ID_ENV
from pipeline.lease import LeaseHeld
from pipeline.storage import ObjectStore
from tests.train_flow.conftest import job_env_processes, local_job_ids

# The smallest job that still exercises everything: tiny preset, 32-token sequences,
# a checkpoint every 4 steps, a validation pass every 6.
TINY = dict(
    vocab_size=512,
    seq_len=32,
    val_fraction=0.05,
    model_preset="tiny",
    micro_batch_size=4,
    warmup_steps=2,
    checkpoint_every=4,
    eval_every=6,
    poll_s=0.5,
)


def read_artifact(key: str) -> dict | None:
    """The newest artifact with `key`. (Prefect 3.8's read_artifacts sends null/empty filters
    that the server rejects or that drop flow-level artifacts, so ask the endpoint directly.)"""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found = client.request(
            "POST", "/artifacts/filter", json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1}
        ).json()
    return found[0] if found else None


def metric_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if "loss" in r]


def find_rank(run_dir: Path, attempt: str, rank: str) -> psutil.Process | None:
    """Rank `rank` of this run's attempt (job ids from its own logs: never another run's job)."""
    job_ids = set(local_job_ids(run_dir, f"{attempt}-"))
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
        except psutil.Error:
            continue
        if env.get(JOB_ID_ENV) in job_ids and env.get("RANK") == rank and "model.train" in " ".join(proc.cmdline()):
            return proc
    return None


def signal_rank_after_step(run_dir: Path, attempt: str, step: int, sig: signal.Signals, sent: list, rank: str = "1", timeout_s: float = 300) -> None:
    """Send `sig` to one rank of the job once rank 0 has logged `step`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and any(s >= step for s in metric_steps(run_dir)):
            proc = find_rank(run_dir, attempt, rank)
            if proc is not None:
                proc.send_signal(sig)
                sent.append((proc.pid, time.monotonic()))
                return
        time.sleep(0.2)


def in_background(target, *args) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_flow_trains_restarts_after_stopped_and_killed_rank_and_reports(prefect_harness, corpus, bucket, runs_dir):
    """One flow run, three attempts: in the first rank 1 is stopped (SIGSTOP) after step 5,
    in the second it is killed (SIGKILL) after step 9, the third finishes. Each restart
    resumes from the latest checkpoint, each verdict names rank 1 and what happened to it;
    the run ends with a report, plots and an exported model, and it learned. Running the flow
    again reports the finished run without training."""
    params = TrainParameters(
        run_name="e2e",
        dataset_uri=corpus,
        steps=12,
        lr=3e-3,
        max_restarts=2,
        stall_timeout_s=10,
        startup_timeout_s=240,
        runs_dir=str(runs_dir),
        output_uri=f"{bucket}/runs/e2e",
        **TINY,
    )
    run_dir = runs_dir / "e2e"
    stopped: list = []
    killed: list = []
    threads = [
        in_background(signal_rank_after_step, run_dir, "e2e-a0", 5, signal.SIGSTOP, stopped),
        in_background(signal_rank_after_step, run_dir, "e2e-a1", 9, signal.SIGKILL, killed),
    ]
    result = train(params=params)
    for thread in threads:
        thread.join(timeout=5)

    assert stopped and killed, "the fault threads never found rank 1"
    outcomes = [(r["attempt"], r["outcome"]) for r in result["restarts"]]
    assert outcomes == [(0, "stalled"), (1, "failed")], result["restarts"]
    assert result["restarts"][0]["reason"].startswith(f"rank1 (pid {stopped[0][0]} ") and "stopped beating" in result["restarts"][0]["reason"]
    assert result["restarts"][1]["reason"].startswith(f"rank 1 (pid {killed[0][0]}") and "killed by SIGKILL" in result["restarts"][1]["reason"]

    steps = metric_steps(run_dir)
    # Attempt 1 resumed from the step-4 checkpoint, attempt 2 from step 8's; none from step 1.
    assert steps[:5] == [1, 2, 3, 4, 5] and steps.count(1) == 1
    assert [b for a, b in zip(steps, steps[1:]) if b <= a] == [5, 9], steps
    assert max(steps) == 12

    completion = json.loads((run_dir / "COMPLETED.json").read_text())
    assert completion["step"] == 12
    summary = result["summary"]
    # It learned: a model that guesses uniformly scores ln(vocab) = 6.24 nats per token.
    assert summary["final_val_loss"] < math.log(512) - 0.5, summary
    assert summary["tokens_seen"] == 12 * 4 * 2 * 32  # steps × micro batch × ranks × seq_len
    assert summary["energy_kwh"] > 0 and summary["co2_kg"] > 0

    store = ObjectStore()
    report = store.get_bytes(result["report"]).decode()
    assert "final validation loss" in report and "stalled" in report and "SIGKILL" in report and result["checkpoint"] in report
    assert set(result["plots"]) == {"Loss", "Learning rate", "Throughput"}  # no MFU on a CPU
    for title, uri in result["plots"].items():
        assert store.get_bytes(uri)[:8] == b"\x89PNG\r\n\x1a\n" and f"]({uri.rsplit('/', 1)[1]})" in report, title
    assert store.exists(f"{result['hf_model']}/config.json")

    report_artifact = read_artifact("e2e-report")
    assert report_artifact is not None and report_artifact["data"].count("](data:image/png;base64,") == 3
    loss_artifact = read_artifact("e2e-loss")
    assert loss_artifact is not None and json.loads(loss_artifact["data"])[-1]["step"] == 12
    assert [p for job_id in local_job_ids(run_dir) for p in job_env_processes(job_id)] == []  # no rank of any attempt outlived the flow

    # The same run again: already finished, so reported (checkpoint, loss, export), not trained.
    logs_before = sorted((run_dir / "logs").iterdir())
    again = train(params=params)
    assert sorted((run_dir / "logs").iterdir()) == logs_before
    assert again["checkpoint"] == result["checkpoint"] == completion["checkpoint"] and again["restarts"] == []
    assert again["summary"]["final_train_loss"] == completion["final_loss"] and again["summary"]["final_val_loss"] == summary["final_val_loss"]
    assert again["hf_model"] == result["hf_model"]
    # device time is the run's, not the re-run's few seconds
    assert again["summary"]["device_hours"] == summary["device_hours"] > 0 and again["summary"]["wall_s"] == summary["wall_s"]


@pytest.mark.slow
def test_divergence_rolls_back_skips_the_data_window_and_lowers_the_learning_rate(prefect_harness, corpus, bucket, runs_dir):
    """Attempt 0's learning rate is multiplied by 1000 from step 7 (a real blow-up of the
    weights, injected): the trainer's guard stops it, the flow points `latest` back to the
    step-4 checkpoint, skips the data the blow-up saw and halves the learning rate; attempt 1
    completes. One rank keeps it cheap."""
    params = TrainParameters(
        run_name="boom",
        dataset_uri=corpus,
        steps=12,
        lr=1e-3,
        max_restarts=1,
        first_attempt_overrides={"debug.explode_lr_at_step": 7},
        resources={"procs_per_node": 1},
        runs_dir=str(runs_dir),
        output_uri=f"{bucket}/runs/boom",
        export_hf=False,
        **TINY,
    )
    run_dir = runs_dir / "boom"
    result = train(params=params)
    (restart,) = result["restarts"]
    assert restart["outcome"] == "diverged" and "step" in restart["reason"], restart
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in lines if "loss" in r]
    cut = next(i for i in range(1, len(train_lines)) if train_lines[i]["step"] <= train_lines[i - 1]["step"])
    first = {r["step"]: r for r in train_lines[:cut]}
    second = {r["step"]: r for r in train_lines[cut:]}
    assert min(second) == 5 and max(second) == 12  # rolled back to the step-4 checkpoint
    assert second[5]["lr"] == pytest.approx(first[5]["lr"] / 2, rel=1e-6)  # learning rate halved
    assert max(r["loss"] for r in first.values() if r["step"] >= 8) > 2 * first[6]["loss"]  # it really blew up
    log = "\n".join(p.read_text() for p in sorted((run_dir / "logs").iterdir()))
    skipped = int(re.search(r"skipping the data of (\d+) step", log).group(1))
    assert skipped == max(first) - 4  # from the checkpoint to the detection
    assert result["summary"]["final_val_loss"] < math.log(512)


@pytest.mark.slow
def test_a_termination_signal_checkpoints_and_the_flow_continues(prefect_harness, corpus, bucket, runs_dir):
    """What a time limit does (Slurm `--signal=TERM@…`, a preemption, Kubernetes' deadline):
    SIGTERM reaches the job after step 3 of 10, with no periodic checkpoint before step 10.
    The trainer saves at the next step boundary and stops; the flow continues the run in a new
    job although no failure is allowed (max_restarts=0)."""
    params = TrainParameters(
        run_name="limit",
        dataset_uri=corpus,
        steps=10,
        max_restarts=0,
        resources={"procs_per_node": 1},
        runs_dir=str(runs_dir),
        output_uri=f"{bucket}/runs/limit",
        export_hf=False,
        **{**TINY, "checkpoint_every": 100},
    )
    run_dir = runs_dir / "limit"
    sent: list = []
    thread = in_background(signal_rank_after_step, run_dir, "limit-a0", 3, signal.SIGTERM, sent, "0")
    result = train(params=params)
    thread.join(timeout=5)
    assert sent
    (restart,) = result["restarts"]
    assert restart["outcome"] == "interrupted" and "received SIGTERM" in restart["reason"], restart
    stopped_at = int(re.search(r"stopped at step (\d+)", restart["reason"]).group(1))
    steps = metric_steps(run_dir)
    assert 3 <= stopped_at < 10 and steps == list(range(1, 11))  # continued from the signal's checkpoint, nothing repeated
    assert result["summary"]["steps"] == 10


@pytest.mark.slow
def test_a_killed_flow_leaves_its_job_to_be_adopted(prefect_harness, corpus, bucket, runs_dir, monkeypatch):
    """SIGKILL of the flow process (no hook can run): its job trains on, and the next run of
    the flow with the same run name adopts that job instead of submitting another one (once
    the dead driver's lease on the run has expired: 8 s here)."""
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    params = TrainParameters(
        run_name="orphan", dataset_uri=corpus, steps=16, runs_dir=str(runs_dir), output_uri=f"{bucket}/runs/orphan", export_hf=False, **TINY
    )
    run_dir = runs_dir / "orphan"
    monkeypatch.setenv("TOKENMILL_LEASE_TTL_S", "8")
    program = "import sys; from flows.train import TrainParameters, train; train(params=TrainParameters.model_validate_json(sys.argv[1]))"
    flow_proc = subprocess.Popen(
        [sys.executable, "-c", program, params.model_dump_json()], env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    )
    try:
        deadline = time.monotonic() + 300
        while not ((run_dir / "metrics.jsonl").exists() and metric_steps(run_dir)):
            assert flow_proc.poll() is None and time.monotonic() < deadline, "the flow never started training"
            time.sleep(0.3)
        flow_proc.kill()
        flow_proc.wait(timeout=30)
    finally:
        if flow_proc.poll() is None:
            flow_proc.kill()
    job_id = json.loads((run_dir / "job.json").read_text())["handle"]["job_id"]
    assert len(job_env_processes(job_id)) >= 2  # nobody watches it, it trains on

    result = train(params=params)
    assert result["restarts"] == [] and [p.name for p in (run_dir / "logs").iterdir()] == [f"{job_id}.log"]
    assert metric_steps(run_dir) == list(range(1, 17))  # one job, never restarted
    assert job_env_processes(job_id) == []


def test_sweep_points_grid_and_random():
    from flows.sweep import SweepParameters, trial_points

    base = TrainParameters(run_name="s", dataset_uri="s3://bkt/d")
    grid = trial_points(SweepParameters(base=base, lr=[1e-3, 1e-4], micro_batch_size=[4, 8], warmup_steps=[0]))
    assert grid == [{"lr": lr, "micro_batch_size": mb, "warmup_steps": 0} for lr in (1e-3, 1e-4) for mb in (4, 8)]
    sampled = trial_points(
        SweepParameters(base=base, lr=[1e-3, 1e-4], micro_batch_size=[4, 8], warmup_steps=[0], search="random", trials=3, seed=1)
    )
    assert len(sampled) == 3 and all(p in grid for p in sampled) and len({tuple(p.values()) for p in sampled}) == 3
    with pytest.raises(ValueError, match="needs `trials`"):
        SweepParameters(base=base, search="random")


def test_dataset_ready_event_starts_a_training_run(prefect_harness):
    """The deployment trigger, registered on the real (test) Prefect server: a
    `tokenmill.dataset.ready` event for the watched dataset creates a `train` run whose
    parameters name the announced version; an event for another dataset does not."""
    from prefect.client.orchestration import get_client
    from prefect.events import emit_event

    from flows.train import dataset_ready_trigger

    uri = "s3://tokenmill/datasets/web-trigger"
    deployment_id = train.to_deployment(name="trigger-test", triggers=[dataset_ready_trigger(uri, {"steps": 7})]).apply()
    time.sleep(2)  # the trigger service loads new automations periodically
    emit_event(
        "tokenmill.dataset.ready",
        resource={
            "prefect.resource.id": "tokenmill.dataset.other",
            "tokenmill.dataset.uri": "s3://tokenmill/datasets/other",
            "tokenmill.dataset.version": "v0",
        },
    )
    emit_event(
        "tokenmill.dataset.ready",
        resource={
            "prefect.resource.id": "tokenmill.dataset.web-trigger",
            "tokenmill.dataset.uri": uri,
            "tokenmill.dataset.version": "abc12345",
        },
    )

    def runs() -> list[dict]:
        with get_client(sync_client=True) as client:  # see read_artifact on why not read_flow_runs
            return client.request(
                "POST",
                "/flow_runs/filter",
                json={"deployments": {"id": {"any_": [str(deployment_id)]}}, "sort": "ID_DESC", "limit": 10},
            ).json()

    deadline = time.monotonic() + 60
    while not (found := runs()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(found) == 1, "the dataset-ready event did not start the deployment"
    params = TrainParameters.model_validate(found[0]["parameters"]["params"])
    assert (params.dataset_uri, params.dataset_version, params.run_name, params.steps) == (uri, "abc12345", "web-trigger-abc12345", 7)


@pytest.mark.slow
def test_terminating_the_flow_process_cancels_the_job(prefect_harness, corpus, bucket, runs_dir, monkeypatch):
    """A second flow run of the same run while the first drives it is refused (it would submit
    a job into the same checkpoints), and leaves the first one's job alone. A Prefect runner
    cancels a flow run by sending SIGTERM to its process: the flow's finally block must take
    the job's ranks down with it."""
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    params = TrainParameters(run_name="doomed", dataset_uri=corpus, steps=1000, runs_dir=str(runs_dir), output_uri=f"{bucket}/runs/doomed", **TINY)
    program = "import sys; from flows.train import TrainParameters, train; train(params=TrainParameters.model_validate_json(sys.argv[1]))"
    flow_proc = subprocess.Popen(
        [sys.executable, "-c", program, params.model_dump_json()], env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    )
    try:
        job_file = params.run_dir / "job.json"

        def ranks_started():
            if not job_file.exists():
                return None
            job_id = json.loads(job_file.read_text())["handle"]["job_id"]
            return job_id if len(job_env_processes(job_id)) >= 2 else None

        deadline = time.monotonic() + 300  # a flow process and two ranks starting on a loaded 2-core machine
        while not (job_id := ranks_started()):
            assert flow_proc.poll() is None and time.monotonic() < deadline, "the flow never started its job"
            time.sleep(0.3)
        monkeypatch.setenv("TOKENMILL_LEASE_TTL_S", "8")  # how long the second driver waits: TTL + 10 s
        with pytest.raises(LeaseHeld, match="training run doomed .* in progress by flow run "):
            train(params=params)
        assert len(job_env_processes(job_id)) >= 2 and json.loads(job_file.read_text())["handle"]["job_id"] == job_id
        flow_proc.send_signal(signal.SIGTERM)
        flow_proc.wait(timeout=60)
    finally:
        if flow_proc.poll() is None:
            flow_proc.kill()
    assert job_env_processes(job_id) == []
    assert not job_file.exists()
