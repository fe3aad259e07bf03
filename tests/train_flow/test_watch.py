"""The watcher against real torchrun jobs whose ranks beat with the trainer's own heartbeat
(model.metrics.Heartbeat) and write its records, then misbehave in one way each: a long
checkpoint save, a save that never ends, a hang, a stopped rank, a killed rank, a
configuration error. Each job costs seconds (no DeepSpeed)."""

from __future__ import annotations

import time
from pathlib import Path

from flows.watch import AttemptWatcher, MetricsLog
from infra.backends import JobSpec, make_backend
from tests.train_flow.conftest import job_env_processes

REPO = Path(__file__).resolve().parents[2]
PROGRAM = """
import os, signal, sys, time
from pathlib import Path
from model.metrics import Heartbeat, record_failure, write_json_atomic
run, mode = Path(sys.argv[1]), sys.argv[2]
rank = int(os.environ["RANK"])
beat = Heartbeat(run, rank, interval_s=0.5)
beat.set_phase("train")
for step in range(1, 4):
    time.sleep(0.2)
    beat.progress(step)
print(f"rank {rank} trained 3 steps", flush=True)
if mode == "slow-save":
    with beat.in_phase("save"):
        time.sleep(float(sys.argv[3]))
    if rank == 0:
        write_json_atomic(run / "COMPLETED.json", {"step": 3, "checkpoint": "ckpt"})
    beat.close()
    time.sleep(float(sys.argv[3]))  # a slow teardown after the work is done
elif mode == "save-forever":
    with beat.in_phase("save"):
        time.sleep(600)
elif mode == "hang":
    time.sleep(600)  # alive (the beat goes on), but no step ever finishes
elif mode == "stop-rank1":
    if rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    time.sleep(600)
elif mode == "kill-rank1":
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(600)
elif mode == "teardown-crash":  # the work is done, then a rank dies tearing down (an NCCL abort)
    if rank == 0:
        write_json_atomic(run / "COMPLETED.json", {"step": 3, "checkpoint": "ckpt"})
    beat.close()
    time.sleep(0.5)
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(2)
elif mode == "config":
    record_failure(run, rank, "config", "model: dim 256 is not a multiple of n_heads 3")
    print(f"model.train: error (rank {rank}): config: model: dim 256 is not a multiple of n_heads 3", flush=True)
    sys.exit(1)
"""


def watch(run_dir: Path, mode: str, *args: str, **timeouts) -> tuple:
    """Run the program as a 2-rank job and watch it; returns (verdict, seconds to the verdict)."""
    program = run_dir / "program.py"
    program.write_text(PROGRAM)
    spec = JobSpec(name=mode, command=[str(program), str(run_dir), mode, *args], run_dir=str(run_dir), procs_per_node=2,
                   env={"PYTHONPATH": str(REPO)})  # fmt: skip
    backend = make_backend("local")
    handle = backend.submit(spec)
    watcher = AttemptWatcher(backend, handle, world_size=2, metrics=MetricsLog(run_dir / "metrics.jsonl"),
                             **{"stall_timeout_s": 8, "startup_timeout_s": 120, "phase_timeout_s": 600, **timeouts})  # fmt: skip
    started = time.monotonic()
    try:
        verdict = watcher.run(poll_s=0.2)
        return verdict, time.monotonic() - started
    finally:
        backend.cancel(handle)
        assert job_env_processes(handle.job_id) == []


def test_a_checkpoint_save_longer_than_the_stall_timeout_is_not_a_stall(tmp_path):
    verdict, _ = watch(tmp_path, "slow-save", "12", stall_timeout_s=4)
    assert verdict.outcome == "completed", verdict.reason


def test_a_save_that_never_ends_is_bounded_by_the_phase_timeout(tmp_path):
    verdict, _ = watch(tmp_path, "save-forever", phase_timeout_s=5)
    assert verdict.outcome == "stalled" and "in phase save for" in verdict.reason


def test_a_hang_with_every_rank_alive_is_a_stall(tmp_path):
    verdict, _ = watch(tmp_path, "hang", stall_timeout_s=4)
    assert verdict.outcome == "stalled" and "no rank has made progress" in verdict.reason and "step 3" in verdict.reason


def test_a_stopped_rank_is_named(tmp_path):
    verdict, _ = watch(tmp_path, "stop-rank1")
    assert verdict.outcome == "stalled" and verdict.reason.startswith("rank1 (pid ") and "stopped beating" in verdict.reason


def test_a_killed_rank_is_named_with_its_signal(tmp_path):
    verdict, _ = watch(tmp_path, "kill-rank1")
    assert verdict.outcome == "failed" and verdict.reason.startswith("rank 1 (pid ") and "was killed by SIGKILL" in verdict.reason
    assert "<N/A>" not in verdict.reason


def test_a_configuration_error_is_not_worth_retrying(tmp_path):
    verdict, _ = watch(tmp_path, "config")
    assert verdict.outcome == "config_error" and verdict.will_recur and "not a multiple of n_heads" in verdict.reason


def test_a_rank_that_dies_after_the_completion_record_does_not_undo_the_run(tmp_path):
    """Rank 0 writes the completion record as its last act, after the final checkpoint: a rank
    crashing in teardown afterwards (launcher exit non-zero) must not send a finished run
    back to training."""
    verdict, _ = watch(tmp_path, "teardown-crash")
    assert verdict.outcome == "completed" and verdict.state.exit_code != 0 and "exit" in verdict.reason, verdict.reason
