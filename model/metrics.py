"""The run directory's signals, which job watchers rely on (see model/configs/README.md):

- `<run_dir>/metrics.jsonl`: rank 0 appends one JSON object per training step and per
  validation, flushed at once.
- `<run_dir>/heartbeat/rank<N>`: a small JSON document that a background thread of every
  rank rewrites every `HEARTBEAT_INTERVAL_S`. Its mtime says the process is alive (a stopped,
  killed or GIL-holding rank stops it); its content says what the rank is doing (`phase`:
  init, load, train, eval, save, and exit once its work is done) and how long ago it last made progress (a finished step or a
  new phase), measured on the rank's own clock. So a 400 s checkpoint save is a long `save`
  phase, not a stall, and a rank hung in a collective is alive but without progress.
- `<run_dir>/COMPLETED.json`: rank 0 writes it as the very last act of a successful run.
- `<run_dir>/STOPPED.json`: rank 0, when a launch ended early on purpose (a termination
  signal before a time limit, or `train.stop_after`) after saving a checkpoint.
- `<run_dir>/failures/rank<N>.json`: a rank that cannot go on says why (`kind`: `config`,
  `diverged` or `error`) before it exits, so the watcher classifies the failure without
  parsing log text.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import socket
import threading
import time
from pathlib import Path

HEARTBEAT_INTERVAL_S = 2.0
PHASES = ("init", "load", "train", "eval", "save", "exit")


def _clean(value):
    """JSON has no NaN/inf: write them as null rather than emitting invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: Path, record: dict) -> None:
    """Write via a temporary file and rename, so that a reader never sees half a document.
    The temporary name is unique: writers in other processes never share it."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        tmp.write_text(json.dumps({k: _clean(v) for k, v in record.items()}, indent=1))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Heartbeat:
    """One rank's heartbeat file, rewritten by a daemon thread."""

    def __init__(self, run_dir: Path, rank: int, interval_s: float = HEARTBEAT_INTERVAL_S):
        self.path = run_dir / "heartbeat" / f"rank{rank}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rank, self.interval_s = rank, interval_s
        self.step, self.phase = 0, "init"
        self.phase_since = self.progress_at = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.beat()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-rank{rank}", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        with self._lock:  # also orders the writes of the thread and of `in_phase`
            now = time.monotonic()
            record = {
                "rank": self.rank, "pid": os.getpid(), "host": socket.gethostname(), "step": self.step, "phase": self.phase,
                "phase_age_s": round(now - self.phase_since, 3), "progress_age_s": round(now - self.progress_at, 3), "time": time.time(),
            }  # fmt: skip
            write_json_atomic(self.path, record)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except OSError:
                pass  # a full or flaky disk: the watcher sees the beat age and judges

    def progress(self, step: int) -> None:
        """The main loop finished `step`."""
        with self._lock:
            self.step, self.progress_at = step, time.monotonic()

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self.phase = phase
            self.phase_since = self.progress_at = time.monotonic()

    @contextlib.contextmanager
    def in_phase(self, phase: str):
        """A long operation (checkpoint download or save, evaluation): the beat goes on and
        names it; back to `train` afterwards."""
        previous = self.phase
        self.set_phase(phase)
        self.beat()
        try:
            yield
        finally:
            self.set_phase(previous)
            self.beat()

    def close(self) -> None:
        """The last beat says `exit`: what follows (tearing down process groups, the
        interpreter's exit) is not a stall, only a while until the launcher ends the job."""
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 1)
        self.set_phase("exit")
        try:
            self.beat()
        except OSError:
            pass


class RunMonitor:
    def __init__(self, run_dir: str | Path, rank: int, *, tensorboard: bool = False):
        self.run_dir = Path(run_dir)
        self.rank = rank
        self.heartbeat = Heartbeat(self.run_dir, rank)
        self._metrics = None
        self._tb = None
        if rank == 0:
            self._metrics = open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8")
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def log(self, record: dict) -> None:
        """Rank 0 only: one JSON line (and TensorBoard scalars under the same names)."""
        if self._metrics is None:
            return
        record = {k: _clean(v) for k, v in record.items()}
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key not in ("step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, record["step"])

    def completed(self, record: dict) -> None:
        """Rank 0: write COMPLETED.json (a watcher never sees half a file)."""
        if self.rank == 0:
            write_json_atomic(self.run_dir / "COMPLETED.json", record)

    def stopped(self, record: dict) -> None:
        """Rank 0: this launch ended early on purpose, with a checkpoint to resume from."""
        if self.rank == 0:
            write_json_atomic(self.run_dir / "STOPPED.json", record)

    def close(self) -> None:
        self.heartbeat.close()
        if self._metrics is not None:
            self._metrics.close()
        if self._tb is not None:
            self._tb.close()


def record_failure(run_dir: str | Path, rank: int, kind: str, message: str, **extra) -> None:
    """Any rank: why it cannot go on (`kind`: config, diverged, error)."""
    folder = Path(run_dir) / "failures"
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / f"rank{rank}.json", {"rank": rank, "kind": kind, "message": message, "time": time.time(), **extra})
