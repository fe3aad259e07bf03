"""Local backend and watcher with real torchrun jobs (tiny Python programs instead of the
trainer, so each job costs seconds), and the cancellation hook."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from flows.train import JOB_FILE, TrainParameters, cancel_job_hook
from flows.watch import AttemptWatcher, MetricsLog
from infra.backends import JobSpec, Phase, make_backend
from infra.backends.local import job_processes
from tests.train_flow.conftest import job_env_processes

# Each rank touches its heartbeat, rank 0 appends one metrics line, then all behave per MODE.
PROGRAM = """
import json, os, sys, time
from pathlib import Path
run, mode, rank = Path(sys.argv[1]), sys.argv[2], os.environ["RANK"]
if mode == "stubborn":  # ignores SIGTERM: only SIGKILL ends it
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
(run / "heartbeat").mkdir(exist_ok=True)
(run / "heartbeat" / f"rank{rank}").touch()
if rank == "0":
    loss = None if mode == "diverge" else 2.5
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 1, "loss": loss, "tokens_per_s": 10.0}) + "\\n")
print(f"rank {rank} up", flush=True)
if mode in ("sleep", "diverge", "stubborn"):
    time.sleep(600)
"""


def spec_for(run_dir: Path, mode: str, name: str) -> JobSpec:
    program = run_dir / "program.py"
    program.write_text(PROGRAM)
    return JobSpec(name=name, command=[str(program), str(run_dir), mode], run_dir=str(run_dir), procs_per_node=2)


def wait_for(check, timeout_s: float = 180.0):
    """Poll `check` until it is truthy. The default deadline is for a machine at load 10, where
    a job's two ranks (a Python import of torch each) can take minutes to start; it costs
    nothing when the condition comes sooner."""
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return result


def ranks_of(handle) -> list[psutil.Process]:
    return [p for p in job_processes(handle) if p.pid != handle.extra["pid"]]


def test_cancel_kills_ranks_orphaned_by_a_killed_launcher(tmp_path):
    backend = make_backend("local")
    handle = backend.submit(spec_for(tmp_path, "sleep", "orphans"))
    ranks = wait_for(lambda: len(ranks_of(handle)) == 2 and ranks_of(handle))
    # torchrun gives workers their own sessions: SIGKILL to the launcher leaves them running.
    os.kill(handle.extra["pid"], signal.SIGKILL)
    wait_for(lambda: backend.status(handle).finished)
    assert all(p.is_running() for p in ranks)
    backend.cancel(handle)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks)
    assert job_env_processes(handle.job_id) == []
    assert backend.status(handle).phase == Phase.CANCELLED


def watch(tmp_path: Path, mode: str):
    backend = make_backend("local")
    handle = backend.submit(spec_for(tmp_path, mode, mode))
    lines: list[str] = []
    watcher = AttemptWatcher(
        backend,
        handle,
        world_size=2,
        metrics=MetricsLog(tmp_path / "metrics.jsonl"),
        stall_timeout_s=60,
        startup_timeout_s=60,
        on_log_lines=lines.extend,
    )
    try:
        return watcher.run(poll_s=0.2), lines
    finally:
        backend.cancel(handle)
        assert job_env_processes(handle.job_id) == []


def test_exit_zero_without_completion_record_is_a_failure(tmp_path):
    verdict, lines = watch(tmp_path, "exit")
    assert verdict.outcome == "failed" and "without rank 0's completion record" in verdict.reason
    assert verdict.state.exit_code == 0
    assert "rank 0 up" in lines and "rank 1 up" in lines  # job output reached the log callback


def test_null_loss_is_divergence(tmp_path):
    verdict, _ = watch(tmp_path, "diverge")
    assert verdict.outcome == "diverged" and "loss is None at step 1" in verdict.reason


def test_stall_when_heartbeats_stop(tmp_path):
    backend = make_backend("local")
    handle = backend.submit(spec_for(tmp_path, "sleep", "stall"))
    watcher = AttemptWatcher(
        backend, handle, world_size=2, metrics=MetricsLog(tmp_path / "metrics.jsonl"), stall_timeout_s=2, startup_timeout_s=60
    )
    try:
        verdict = watcher.run(poll_s=0.2)
    finally:
        backend.cancel(handle)
    assert verdict.outcome == "stalled" and "no rank has beaten for" in verdict.reason


def test_cancellation_hook_cancels_the_recorded_job(tmp_path, corpus):
    """What a Prefect runner calls after it killed a cancelled flow run's process: the job that
    the flow recorded in its run directory must go too."""
    from prefect.client.schemas.objects import FlowRun, State, StateType

    params = TrainParameters(run_name="hooked", dataset_uri=corpus, runs_dir=str(tmp_path))
    params.run_dir.mkdir(parents=True)
    backend = make_backend("local")
    handle = backend.submit(spec_for(params.run_dir, "sleep", "hooked"))
    (params.run_dir / JOB_FILE).write_text(json.dumps({"handle": handle.to_dict(), "attempt": 0, "submitted_at": time.time()}))
    wait_for(lambda: len(ranks_of(handle)) == 2)

    flow_run = FlowRun(flow_id="00000000-0000-0000-0000-000000000000", parameters={"params": params.model_dump(mode="json")})
    cancel_job_hook(None, flow_run, State(type=StateType.CANCELLED))
    assert job_env_processes(handle.job_id) == []
    assert not (params.run_dir / JOB_FILE).exists()


def test_parameters_are_validated(tmp_path):
    with pytest.raises(ValueError, match="unknown model preset"):
        TrainParameters(run_name="x", dataset_uri="s3://bkt/d", model_preset="huge")
    with pytest.raises(ValueError):
        TrainParameters(run_name="bad name/", dataset_uri="s3://bkt/d")
    with pytest.raises(ValueError):
        TrainParameters(run_name="x", dataset_uri="s3://bkt/d", backend="pbs")
    # Path traversal (issue 12.6): names and versions become directories and keys.
    hostile = [
        {"run_name": "../../../escaped"}, {"run_name": ".hidden"}, {"run_name": "a/b"},
        {"dataset_version": "../../../escaped", "run_name": None}, {"dataset_version": "v1\nx"},
        {"dataset_uri": "s3://bkt/d/../../raw"}, {"tokens_uri": "/tmp/../etc"}, {"checkpoint_uri": "s3://bkt/ckpt/../x"},
        {"runs_dir": "/work/runs/.."}, {"output_uri": "s3://bkt/out\x00"},
    ]  # fmt: skip
    for fields in hostile:
        with pytest.raises(ValueError) as caught:
            TrainParameters(**{"run_name": "x", "dataset_uri": "s3://bkt/d", "runs_dir": str(tmp_path), **fields})
        assert next(iter(fields)) in str(caught.value), fields
    assert list(tmp_path.iterdir()) == []
    ok = TrainParameters(dataset_uri="s3://bkt/datasets/web", dataset_version="0123abcd", runs_dir=str(tmp_path))
    assert ok.run_name == "web-0123abcd" and ok.run_dir == tmp_path.resolve() / "web-0123abcd"


def test_cli_reports_bad_parameters_in_one_line(capsys):
    from flows.cli import main

    assert main(["train", "s3://bkt/web", "--run-name", "x", "--preset", "huge"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown model preset 'huge'" in err
    assert main(["train", "s3://bkt/web"]) == 2  # 'latest' needs a run name
    assert "give run_name" in capsys.readouterr().err
    assert main(["train", "s3://bkt/web", "--version", "0123abcd", "--backend-options", "{nope"]) == 2
    assert "--backend-options is not JSON" in capsys.readouterr().err


def test_cli_flags_override_params_only_when_given(tmp_path):
    """`--params` is the base; only flags typed on the command line win (argparse defaults
    used to override the file silently)."""
    from flows.cli import build_parser
    from flows.cli.train import train_parameters

    params_file = tmp_path / "params.yaml"
    params_file.write_text("steps: 7\nlr: 0.01\nmodel_preset: '125m'\nresources: {procs_per_node: 1, cpus_per_node: 4}\nmax_restarts: 0\n")
    parse = build_parser().parse_args
    fields = train_parameters(parse(["train", "s3://bkt/web", "--params", str(params_file)]))
    assert (fields["steps"], fields["lr"], fields["model_preset"], fields["max_restarts"]) == (7, 0.01, "125m", 0)
    assert fields["resources"] == {"procs_per_node": 1, "cpus_per_node": 4} and "backend" not in fields
    fields = train_parameters(parse(["train", "s3://bkt/web", "--params", str(params_file), "--steps", "9", "--lr", "0.002", "--nodes", "2"]))
    assert (fields["steps"], fields["lr"], fields["model_preset"]) == (9, 0.002, "125m")
    assert fields["resources"] == {"procs_per_node": 1, "cpus_per_node": 4, "nodes": 2}
