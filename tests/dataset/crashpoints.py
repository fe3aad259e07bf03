"""Crash-point harness: run a workload in a child process that SIGKILLs itself just before its
N-th write to object storage (put, upload, copy, delete), for every N in turn.

The child wraps the ObjectStore's write methods (the real store underneath) and counts
calls; with `crash_at=0` it only counts and reports the total. A workload is a module-level
function `name(argv) -> None` in an importable module.

Children are forked from a `multiprocessing` fork server that imported the pipeline once
(single-threaded, no connection opened yet), so a crash point costs the workload, not an
interpreter start and a second of imports.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import traceback

WRITE_METHODS = ("put_bytes", "upload_file", "copy", "delete", "delete_many")
PRELOAD = ["pipeline.refresh", "tests.dataset.workloads"]


def _context():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def _child(crash_at: int, module: str, function: str, argv: list, env: dict, conn) -> None:
    os.environ.update(env)
    from pipeline import storage

    writes = 0

    def counted(original):
        def write(self, *args, **kwargs):
            nonlocal writes
            writes += 1
            if writes == crash_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, *args, **kwargs)

        return write

    for name in WRITE_METHODS:
        setattr(storage.ObjectStore, name, counted(getattr(storage.ObjectStore, name)))
    try:
        getattr(importlib.import_module(module), function)(argv)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise
    conn.send(("writes", writes))


def run(crash_at: int, module: str, function: str, argv: list, env: dict, timeout: float = 300) -> tuple[int, str]:
    """(exit code, what the child reported): -9 and "" when it was killed at `crash_at`."""
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(crash_at, module, function, argv, env, sender))
    child.start()
    sender.close()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join()
        raise AssertionError(f"crash point {crash_at}: the workload did not finish in {timeout} s")
    try:
        report = receiver.recv()
    except EOFError:  # killed before it could report
        report = ("", "")
    receiver.close()
    return child.exitcode, str(report[1])


def count_writes(module: str, function: str, argv: list, env: dict) -> int:
    code, report = run(0, module, function, argv, env)
    assert code == 0, report[-3000:]
    return int(report)
