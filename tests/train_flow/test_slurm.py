"""Slurm backend against a real single-node cluster (munged + slurmctld + slurmd)."""

from __future__ import annotations

import json

import pytest

from flows.train import TrainParameters
from infra.backends import JobSpec, Phase, make_backend
from tests.train_flow.conftest import job_env_processes
from tests.train_flow.test_backends import spec_for, wait_for
from tests.train_flow.test_train_flow import TINY, read_artifact

pytestmark = pytest.mark.slurm


def test_scancel_stops_every_rank(slurm_cluster, tmp_path):
    backend = make_backend("slurm", slurm_conf=str(slurm_cluster.conf))
    handle = backend.submit(spec_for(tmp_path, "sleep", "sleepy"))
    marker = f"slurm-{handle.job_id}"
    wait_for(lambda: backend.status(handle).phase == Phase.RUNNING and len(job_env_processes(marker)) >= 2)
    backend.cancel(handle)
    assert backend.status(handle).phase == Phase.CANCELLED
    wait_for(lambda: job_env_processes(marker) == [], timeout_s=120)


@pytest.mark.slow
def test_sweep_of_training_flows_on_slurm(slurm_cluster, prefect_harness, corpus, bucket, runs_dir):
    """Two trials, each a `train` subflow whose DeepSpeed job runs through sbatch + srun +
    torchrun; the sweep picks the one with the lower validation loss. (One rank per trial keeps
    the test short; the local end-to-end test covers two ranks.)"""
    from flows.sweep import SweepParameters, sweep

    base = TrainParameters(
        run_name="sw",
        dataset_uri=corpus,
        steps=3,
        backend="slurm",
        backend_options={"slurm_conf": str(slurm_cluster.conf)},
        max_restarts=0,
        resources={"procs_per_node": 1, "cpus_per_node": 1},
        runs_dir=str(runs_dir),
        output_uri=f"{bucket}/runs/sw",
        **{**TINY, "eval_every": 3},
    )
    # A learning rate of 1e-7 leaves the random model where it is; 3e-3 learns in 3 steps.
    result = sweep(params=SweepParameters(base=base, lr=[1e-7, 3e-3], warmup_steps=[0], micro_batch_size=[4]))
    rows = result["trials"]
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert rows[1]["val_loss"] < rows[0]["val_loss"]
    assert result["best"]["trial"] == "sw-t01" and result["best"]["lr"] == 3e-3
    assert rows[0]["report"] == f"{bucket}/runs/sw/sw-t00/report.md"

    run_dir = runs_dir / "sw-t01"
    completion = json.loads((run_dir / "COMPLETED.json").read_text())
    assert completion["step"] == 3 and completion["checkpoint"].endswith("global_step3")
    script = (run_dir / "sw-t01-a0.sbatch").read_text()
    assert "srun" in script and "torch.distributed.run" in script and "--nproc_per_node 1" in script and "--cpus-per-task=1" in script
    # A job is complete when its completion record is written; its srun steps may take a moment to exit.
    # (only this test's jobs: an earlier test's job may still be ending on the shared cluster)
    job_ids = [f"slurm-{log.stem.rsplit('-', 1)[1]}" for t in ("sw-t00", "sw-t01") for log in (runs_dir / t / "logs").glob(f"{t}-a0-*.log")]
    assert len(job_ids) == 2
    wait_for(lambda: not any(job_env_processes(job_id) for job_id in job_ids), timeout_s=120)
    table = read_artifact("sw-sweep")
    assert table is not None and [r["trial"] for r in json.loads(table["data"])] == ["sw-t00", "sw-t01"]


@pytest.mark.parametrize(
    ("reason", "never"),
    [("PartitionTimeLimit", True), ("InvalidAccount", True), ("DependencyNeverSatisfied", True),
     ("Resources", False), ("Priority", False), ("PartitionDown", False), ("JobHeldAdmin", False), ("PartitionInactive", False)],  # fmt: skip
)
def test_only_pending_reasons_no_wait_can_cure_fail_the_job_at_once(reason, never):
    """A limit the job exceeds fails at once; a busy cluster or an administrator's maintenance
    (a partition set down, a job held) is waited out, up to the queue timeout."""
    from infra.backends.slurm import state_from

    state = state_from("PENDING", "0:0", reason)
    assert state.phase == Phase.PENDING and state.never_starts is never and reason in state.reason


def test_the_srun_line_gives_every_task_its_cpus():
    """Since Slurm 22.05 srun does not inherit sbatch's --cpus-per-task: without it on the srun
    line a task (torchrun and all its ranks) is bound to one CPU under task/affinity. The test
    cluster runs task/none, which would hide that, so the line itself is checked."""
    from infra.backends.slurm import batch_script

    for cpus, procs, expected in [(8, 4, 8), (None, 3, 3)]:
        spec = JobSpec(name="x", command=["-m", "model.train"], run_dir="/runs/x", procs_per_node=procs, cpus_per_node=cpus)
        (srun,) = [line for line in batch_script(spec).splitlines() if line.lstrip().startswith("srun ")]
        assert f"--cpus-per-task={expected}" in srun.split()


def test_ranks_meet_when_the_port_the_job_id_selects_is_taken(slurm_cluster, tmp_path):
    """The rendezvous port came from the job id alone; when a connection on the node held it,
    torchrun's agent could not host the store and the job died after two minutes of
    connection timeouts (seen with two test suites on one machine). Hold the port the next
    job's id selects, as an outgoing connection would: the job picks another and completes."""
    from infra.backends.rendezvous_port import preferred_port
    from tests.train_flow.test_rendezvous_port import occupy_as_a_client
    from tests.train_flow.test_watch import PROGRAM, REPO

    backend = make_backend("slurm", slurm_conf=str(slurm_cluster.conf))
    (tmp_path / "first").mkdir()
    first = backend.submit(spec_for(tmp_path / "first", "sleep", "first"))  # only for its id: the next job's is one more
    backend.cancel(first)
    run_dir = tmp_path / "held"
    run_dir.mkdir()
    (run_dir / "program.py").write_text(PROGRAM)
    spec = JobSpec(name="held", command=[str(run_dir / "program.py"), str(run_dir), "slow-save", "0.1"], run_dir=str(run_dir),
                   procs_per_node=2, env={"PYTHONPATH": str(REPO)})  # fmt: skip
    held_port = preferred_port(int(first.job_id) + 1)
    held = occupy_as_a_client(held_port)
    try:
        handle = backend.submit(spec)
        assert int(handle.job_id) == int(first.job_id) + 1, "another job came in between: the held port is not this job's"
        state = wait_for(lambda: (s := backend.status(handle)).finished and s)
    finally:
        for sock in held:
            sock.close()
    log = backend.logs(handle).lines
    assert state.phase == Phase.SUCCEEDED, (state, log[-20:])
    (endpoint,) = [line.rsplit(":", 1)[1] for line in log if line.startswith("tokenmill: c10d rendezvous at ")]
    assert int(endpoint) != held_port
    assert json.loads((run_dir / "COMPLETED.json").read_text())["step"] == 3


def test_queue_wait_is_not_start_up_and_has_its_own_timeout(slurm_cluster, tmp_path):
    """The node is full: the next job waits (PENDING, reason Resources). A queue timeout ends
    the wait with Slurm's reason; without one, the job starts once the node frees up, and the
    queue time does not count against a startup timeout shorter than the wait."""
    import os
    import threading
    import time

    from flows.watch import AttemptWatcher, MetricsLog
    from tests.train_flow.test_watch import PROGRAM, REPO

    backend = make_backend("slurm", slurm_conf=str(slurm_cluster.conf))
    cpus = os.cpu_count() or 1
    blocker_dir = tmp_path / "blocker"
    blocker_dir.mkdir()
    blocker = backend.submit(spec_for(blocker_dir, "sleep", "blocker"))
    wait_for(lambda: backend.status(blocker).phase == Phase.RUNNING)

    def waiting_job(name: str):
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "program.py").write_text(PROGRAM)
        spec = JobSpec(name=name, command=[str(run_dir / "program.py"), str(run_dir), "slow-save", "1"], run_dir=str(run_dir),
                       procs_per_node=2, cpus_per_node=cpus, env={"PYTHONPATH": str(REPO)})  # fmt: skip
        handle = backend.submit(spec)
        pending: list[str] = []
        # startup_timeout_s: what two ranks need to start on a loaded 2-core machine (load 20: ~25 s).
        watcher = AttemptWatcher(backend, handle, world_size=2, metrics=MetricsLog(run_dir / "metrics.jsonl"), stall_timeout_s=30,
                                 startup_timeout_s=40, queue_timeout_s=4, on_pending=pending.append)  # fmt: skip
        return handle, watcher, pending

    handle, watcher, pending = waiting_job("queued")
    verdict = watcher.run(poll_s=0.5)
    assert verdict.outcome == "queue_timeout" and verdict.will_recur and "reason Resources" in verdict.reason
    assert pending[-1] == "slurm pending, reason Resources"  # reported as soon as Slurm gives it
    backend.cancel(handle)

    handle, watcher, pending = waiting_job("started")
    watcher.queue_timeout_s = 600
    threading.Timer(45, backend.cancel, args=(blocker,)).start()  # the node frees up after 45 s > startup_timeout_s
    started = time.monotonic()
    verdict = watcher.run(poll_s=0.5)
    assert verdict.outcome == "completed", verdict.reason
    assert time.monotonic() - started > 45 and pending
    wait_for(lambda: backend.status(handle).finished)


def test_cancel_of_a_job_that_is_slow_to_go_returns_a_note(slurm_cluster, tmp_path):
    from infra.backends.slurm import SlurmBackend

    # The ranks ignore SIGTERM: after scancel the job stays COMPLETING for KillWait (10 s in
    # the test cluster) until slurmd sends SIGKILL, longer than the 1 s the flow waits here.
    backend = SlurmBackend(slurm_conf=str(slurm_cluster.conf), cancel_timeout_s=1.0)
    handle = backend.submit(spec_for(tmp_path, "stubborn", "slowgo"))
    beats = [tmp_path / "heartbeat" / f"rank{r}" for r in (0, 1)]
    wait_for(lambda: all(b.exists() for b in beats))
    note = backend.cancel(handle)
    assert note is not None and handle.job_id in note and "Slurm will finish it" in note
    wait_for(lambda: backend.status(handle).finished, timeout_s=120)


def test_a_controller_that_does_not_answer_leaves_the_job_unknown_not_failed(slurm_cluster, tmp_path):
    """scontrol that cannot reach slurmctld (restarting, overloaded) used to read as "job
    unknown: FAILED", and the flow restarted a job that was still running. Now the watcher
    asks again, sees the job running when the controller answers, and gives up (raises)
    only after `unavailable_timeout_s`."""
    import re

    from flows.watch import AttemptWatcher, MetricsLog
    from infra.backends import BackendUnavailable
    from infra.backends.slurm import SlurmBackend

    # The same cluster seen through a controller port nobody listens on: a real scontrol's connect failure.
    silent_conf = tmp_path / "silent-slurm.conf"
    silent_conf.write_text(re.sub(r"(?m)^SlurmctldPort=\d+$", "SlurmctldPort=1", slurm_cluster.conf.read_text()) + "MessageTimeout=1\n")
    backend = SlurmBackend(slurm_conf=str(slurm_cluster.conf))
    handle = backend.submit(spec_for(tmp_path, "sleep", "silent"))
    try:
        notes: list[str] = []
        watcher = AttemptWatcher(backend, handle, world_size=2, metrics=MetricsLog(tmp_path / "metrics.jsonl"), stall_timeout_s=600,
                                 startup_timeout_s=600, unavailable_timeout_s=3600, on_unavailable=notes.append)  # fmt: skip
        wait_for(lambda: backend.status(handle).phase == Phase.RUNNING)
        backend.slurm_conf = str(silent_conf)
        with pytest.raises(BackendUnavailable, match="Unable to contact slurm controller"):
            backend.status(handle)
        assert watcher.poll() is None and watcher.poll() is None
        assert len(notes) == 1 and "asking again" in notes[0], notes

        backend.slurm_conf = str(slurm_cluster.conf)
        assert watcher.poll() is None and backend.status(handle).phase == Phase.RUNNING  # it ran on all along
        assert "answers again" in notes[-1]

        watcher.unavailable_timeout_s = 0.0
        backend.slurm_conf = str(silent_conf)
        assert watcher.poll() is None  # the first failure starts the clock
        with pytest.raises(BackendUnavailable, match="may still be running"):
            watcher.poll()
    finally:
        backend.slurm_conf = str(slurm_cluster.conf)
        backend.cancel(handle)
