"""Run a job on this machine: torchrun as its own process group, arguments as a list (never a
shell), output into a log file under the run directory.

torchrun starts its workers in sessions of their own, so killing torchrun's process group
misses them, and a SIGKILLed torchrun leaves them re-parented to init. Cancel therefore finds
a job's processes three ways: the launcher's process group, its descendants, and every
process whose environment carries the job's id (JOB_ID_ENV), which also catches orphans.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil

from infra.backends.base import JOB_ID_ENV, JobBackend, JobHandle, JobSpec, JobState, LogChunk, Phase, read_log_file

TERMINATE_GRACE_S = 10.0


def torchrun_argv(spec: JobSpec, python: str = sys.executable) -> list[str]:
    """torchrun for one node: `--standalone` picks a free rendezvous port, so jobs side by side never collide."""
    if spec.nodes != 1:
        raise ValueError(f"the local backend runs one node; {spec.name} asks for {spec.nodes}")
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(spec.procs_per_node),
        "--max_restarts",
        "0",
        *spec.command,
    ]


class LocalBackend(JobBackend):
    name = "local"

    # Launchers started by this process, so that exit codes can be collected. A handle from
    # another process (a cancellation hook) is still cancellable through pid and job id.
    _launched: dict[str, subprocess.Popen] = {}
    _cancelled: set[str] = set()
    _lock = threading.Lock()

    def __init__(self, python: str = sys.executable):
        self.python = python

    def submit(self, spec: JobSpec) -> JobHandle:
        job_id = f"{spec.name}-{uuid.uuid4().hex[:8]}"
        log_path = Path(spec.run_dir) / "logs" / f"{job_id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **spec.env, JOB_ID_ENV: job_id}
        if spec.cpus_per_node and "OMP_NUM_THREADS" not in spec.env:
            env["OMP_NUM_THREADS"] = str(max(1, spec.cpus_per_node // spec.procs_per_node))
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                torchrun_argv(spec, self.python),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=spec.run_dir,
                start_new_session=True,
            )
        with self._lock:
            self._launched[job_id] = proc
        return JobHandle(
            backend=self.name,
            job_id=job_id,
            run_dir=spec.run_dir,
            log_path=str(log_path),
            extra={"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time()},
        )

    def status(self, handle: JobHandle) -> JobState:
        proc = self._launched.get(handle.job_id)
        if proc is None:  # adopted: started by another (possibly dead) process
            if _launcher(handle) is not None:
                return JobState(Phase.RUNNING)
            if handle.job_id in self._cancelled:
                return JobState(Phase.CANCELLED, None, "cancelled")
            return JobState(Phase.EXITED, None, "launcher exited (started by another process: exit code unknown)")
        code = proc.poll()
        if code is None:
            return JobState(Phase.RUNNING)
        if handle.job_id in self._cancelled:
            return JobState(Phase.CANCELLED, code, "cancelled")
        if code == 0:
            return JobState(Phase.SUCCEEDED, 0)
        if code < 0:
            return JobState(Phase.FAILED, code, f"launcher killed by {signal.Signals(-code).name}")
        return JobState(Phase.FAILED, code, f"launcher exited with {code}")

    def logs(self, handle: JobHandle, since: int = 0) -> LogChunk:
        return read_log_file(handle.log_path, since)

    def cancel(self, handle: JobHandle) -> str | None:
        with self._lock:
            self._cancelled.add(handle.job_id)
        deadline = time.monotonic() + TERMINATE_GRACE_S
        sig = signal.SIGTERM
        while True:
            procs = job_processes(handle)
            if not procs:
                break
            if sig == signal.SIGTERM and _launcher(handle) is not None:
                _signal_group(handle, sig)
            for p in procs:
                try:
                    p.send_signal(sig)
                except psutil.Error:
                    pass
            psutil.wait_procs(procs, timeout=max(0.5, min(2.0, deadline - time.monotonic())))
            if time.monotonic() >= deadline:
                sig = signal.SIGKILL  # ranks stuck in a collective ignore SIGTERM's handler
        proc = self._launched.get(handle.job_id)
        if proc is not None:
            proc.wait()  # reap, so no zombie is left behind
        return None


def _launcher(handle: JobHandle) -> psutil.Process | None:
    """The launcher process, if it still runs (the create time guards against pid reuse)."""
    try:
        proc = psutil.Process(handle.extra["pid"])
        if abs(proc.create_time() - handle.extra["create_time"]) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except (psutil.Error, KeyError):
        pass
    return None


def job_processes(handle: JobHandle) -> list[psutil.Process]:
    """Every live process of a job: the launcher, its descendants, and anything carrying the job's id."""
    found: dict[int, psutil.Process] = {}
    launcher = _launcher(handle)
    if launcher is not None:
        found[launcher.pid] = launcher
        try:
            found.update({c.pid: c for c in launcher.children(recursive=True)})
        except psutil.Error:
            pass
    for proc in psutil.process_iter():
        if proc.pid in found or proc.pid == os.getpid():
            continue
        try:
            if proc.environ().get(JOB_ID_ENV) == handle.job_id:
                found[proc.pid] = proc
        except psutil.Error:
            continue
    live = []
    for proc in found.values():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                live.append(proc)
        except psutil.Error:
            continue
    return live


def _signal_group(handle: JobHandle, sig: signal.Signals) -> None:
    try:
        os.killpg(handle.extra["pid"], sig)
    except (ProcessLookupError, PermissionError, KeyError):
        pass
