"""The `train` flow end to end on the local backend: real 2-rank DeepSpeed jobs on CPU
(model.train under torchrun), real S3 server, Prefect's test harness."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from flows.train import TrainParameters, train
from infra.backends import JOB_ID_ENV
from pipeline.storage import ObjectStore
from tests.train_flow.conftest import job_env_processes

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


def find_rank(job_marker: str, rank: str) -> psutil.Process | None:
    for proc in psutil.process_iter():
        try:
            env = proc.environ()
        except psutil.Error:
            continue
        if job_marker in env.get(JOB_ID_ENV, "") and env.get("RANK") == rank and "model.train" in " ".join(proc.cmdline()):
            return proc
    return None


def kill_rank_after_step(run_dir: Path, job_marker: str, step: int, killed: list, timeout_s: float = 240) -> None:
    """SIGKILL rank 1 of the job once rank 0 has logged `step` (after the first checkpoint)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and any(s >= step for s in metric_steps(run_dir)):
            proc = find_rank(job_marker, "1")
            if proc is not None:
                proc.send_signal(signal.SIGKILL)
                killed.append(proc.pid)
                return
        time.sleep(0.2)


@pytest.mark.slow
def test_flow_trains_restarts_after_stall_and_killed_rank_and_reports(prefect_harness, corpus, bucket, runs_dir):
    """One flow run, three attempts: the first stalls (rank 0 hangs at step 6, injected), the
    second loses rank 1 to SIGKILL after step 9, the third finishes. Each restart resumes
    from the latest checkpoint; the run ends with a report, a loss curve, an exported model."""
    params = TrainParameters(
        run_name="e2e",
        dataset_uri=corpus,
        steps=12,
        first_attempt_overrides={"debug.stall_at_step": 6},
        max_restarts=2,
        stall_timeout_s=6,
        startup_timeout_s=240,
        runs_dir=str(runs_dir),
        output_uri=f"{bucket}/runs/e2e",
        **TINY,
    )
    run_dir = runs_dir / "e2e"
    killed: list[int] = []
    killer = threading.Thread(target=kill_rank_after_step, args=(run_dir, "e2e-a1", 9, killed), daemon=True)
    killer.start()
    result = train(params=params)
    killer.join(timeout=5)

    assert killed, "the killer never found rank 1 of the second attempt"
    outcomes = [(r["attempt"], r["outcome"]) for r in result["restarts"]]
    assert outcomes == [(0, "stalled"), (1, "failed")], result["restarts"]
    assert "rank" in result["restarts"][0]["reason"]

    steps = metric_steps(run_dir)
    # Attempt 0 logged 1..5 then hung; attempt 1 resumed from the step-4 checkpoint; attempt 2
    # resumed from step 8's. No attempt started over from step 1.
    assert steps[:5] == [1, 2, 3, 4, 5]
    assert steps.count(1) == 1
    resumed_at = [b for a, b in zip(steps, steps[1:]) if b <= a]
    assert resumed_at == [5, 9], steps
    assert max(steps) == 12

    completion = json.loads((run_dir / "COMPLETED.json").read_text())
    assert completion["step"] == 12
    summary = result["summary"]
    assert summary["final_val_loss"] is not None and summary["final_val_loss"] < 7.0  # ln(512) ≈ 6.24 at random
    assert summary["tokens_seen"] == 12 * 4 * 2 * 32  # steps × micro batch × ranks × seq_len
    assert summary["energy_kwh"] > 0 and summary["co2_kg"] > 0

    store = ObjectStore()
    report = store.get_bytes(result["report"]).decode()
    assert "final validation loss" in report and "stalled" in report and result["checkpoint"] in report
    assert store.get_bytes(result["loss_curve"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "loss_curve.png").exists()
    assert store.exists(f"{result['hf_model']}/config.json")

    report_artifact = read_artifact("e2e-report")
    assert report_artifact is not None and "final validation loss" in report_artifact["data"]
    loss_artifact = read_artifact("e2e-loss")
    assert loss_artifact is not None and json.loads(loss_artifact["data"])[-1]["step"] == 12
    assert job_env_processes("e2e-a") == []  # no rank of any attempt outlived the flow


def test_sweep_points_grid_and_random():
    from flows.sweep import SweepParameters, trial_points

    base = TrainParameters(run_name="s", dataset_uri="s3://b/d")
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
            "tokenmill.dataset.version": "abc123",
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
    assert (params.dataset_uri, params.dataset_version, params.run_name, params.steps) == (uri, "abc123", "web-trigger-abc123", 7)


@pytest.mark.slow
def test_terminating_the_flow_process_cancels_the_job(prefect_harness, corpus, runs_dir):
    """A Prefect runner cancels a flow run by sending SIGTERM to its process: the flow's
    finally block must take the job's ranks down with it."""
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    params = TrainParameters(run_name="doomed", dataset_uri=corpus, steps=1000, runs_dir=str(runs_dir), **TINY)
    program = "import sys; from flows.train import TrainParameters, train; train(params=TrainParameters.model_validate_json(sys.argv[1]))"
    flow_proc = subprocess.Popen(
        [sys.executable, "-c", program, params.model_dump_json()], env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    )
    try:
        job_file = params.run_dir / "job.json"

        def ranks_started():
            if not job_file.exists():
                return None
            job_id = json.loads(job_file.read_text())["job_id"]
            return job_id if len(job_env_processes(job_id)) >= 2 else None

        deadline = time.monotonic() + 120
        while not (job_id := ranks_started()):
            assert flow_proc.poll() is None and time.monotonic() < deadline, "the flow never started its job"
            time.sleep(0.3)
        flow_proc.send_signal(signal.SIGTERM)
        flow_proc.wait(timeout=60)
    finally:
        if flow_proc.poll() is None:
            flow_proc.kill()
    assert job_env_processes(job_id) == []
    assert not job_file.exists()
