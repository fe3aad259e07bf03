"""Watching one attempt of a training job: the signals the trainer leaves in its run directory
(rank 0's metrics JSONL, per-rank heartbeat files, rank 0's completion record) plus the
backend's job state, turned into one verdict: completed, failed, stalled or diverged.

No Prefect here: the flow feeds the callbacks into its logger and artifacts, and tests can
drive a watcher directly.
"""

import json
import math
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from infra.backends import JobBackend, JobHandle, JobState, Phase
from infra.backends.base import read_log_file

METRICS_FILE = "metrics.jsonl"
COMPLETION_FILE = "COMPLETED.json"
HEARTBEAT_DIR = "heartbeat"
# The trainer stops on a non-finite loss before logging it; its last words say so.
DIVERGED_LINE = re.compile(r"loss is -?(nan|inf)", re.IGNORECASE)


@dataclass
class Verdict:
    outcome: str  # "completed" | "failed" | "stalled" | "diverged"
    reason: str
    state: JobState | None = None
    completion: dict | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "completed"


@dataclass
class MetricsLog:
    """Rank 0's metrics, newest record per step (a resumed attempt repeats the steps after its
    checkpoint; the repeat wins). Reads the growing file incrementally."""

    path: Path
    cursor: int = 0
    train: dict[int, dict] = field(default_factory=dict)
    val: dict[int, dict] = field(default_factory=dict)

    def read_new(self) -> list[dict]:
        if self.path.exists() and self.path.stat().st_size < self.cursor:
            self.cursor = 0  # the file was replaced: read it again from the start
        chunk = read_log_file(str(self.path), self.cursor)
        self.cursor = chunk.cursor
        records = []
        for line in chunk.lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(record, dict) or "step" not in record:
                continue
            (self.val if "val_loss" in record else self.train)[int(record["step"])] = record
            records.append(record)
        return records

    @property
    def last_step(self) -> int:
        return max(self.train, default=0)

    def latest(self) -> dict | None:
        return self.train[self.last_step] if self.train else None

    def latest_val(self) -> dict | None:
        return self.val[max(self.val)] if self.val else None


def not_finite(value) -> bool:
    """NaN/inf, or null: the trainer writes non-finite floats as null (JSON has no NaN)."""
    return value is None or (isinstance(value, (int, float)) and not math.isfinite(value))


def diverged(record: dict) -> str | None:
    """The key of a non-finite loss in a metrics record, if any."""
    return next((key for key in ("loss", "val_loss") if key in record and not_finite(record[key])), None)


def heartbeat_ages(run_dir: Path, since: float, now: float) -> dict[str, float]:
    """Seconds since each rank's last heartbeat; a heartbeat from before `since` (an earlier
    attempt) counts as none."""
    ages = {}
    for path in (run_dir / HEARTBEAT_DIR).glob("rank*"):
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            continue
        if mtime >= since:
            ages[path.name] = now - mtime
    return ages


def read_completion(run_dir: Path, since: float) -> dict | None:
    """Rank 0's completion record, if it was written during this attempt."""
    path = run_dir / COMPLETION_FILE
    try:
        if path.stat().st_mtime < since:
            return None
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class AttemptWatcher:
    """Polls one submitted job until it gives a verdict.

    Stall: once every expected rank has beaten at least once, the oldest heartbeat must stay
    younger than `stall_timeout_s` (a hung rank stops its own beat, and the others stop in the
    next collective); before that, start-up (imports, rendezvous, data) gets `startup_timeout_s`.
    """

    def __init__(
        self,
        backend: JobBackend,
        handle: JobHandle,
        *,
        world_size: int,
        metrics: MetricsLog,
        stall_timeout_s: float,
        startup_timeout_s: float,
        on_log_lines: Callable[[list[str]], None] = lambda lines: None,
        on_metrics: Callable[[list[dict]], None] = lambda records: None,
        clock: Callable[[], float] = time.time,
    ):
        self.backend = backend
        self.handle = handle
        self.run_dir = Path(handle.run_dir)
        self.world_size = world_size
        self.metrics = metrics
        self.stall_timeout_s = stall_timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.on_log_lines = on_log_lines
        self.on_metrics = on_metrics
        self.clock = clock
        self.started = clock()
        self.log_cursor = 0
        self.log_tail: deque[str] = deque(maxlen=50)

    def _drain(self) -> dict | None:
        """Forward new log lines and metrics; return the first non-finite training record."""
        chunk = self.backend.logs(self.handle, self.log_cursor)
        self.log_cursor = chunk.cursor
        if chunk.lines:
            self.log_tail.extend(chunk.lines)
            self.on_log_lines(chunk.lines)
        records = self.metrics.read_new()
        if records:
            self.on_metrics(records)
        return next((r for r in records if diverged(r)), None)

    def poll(self) -> Verdict | None:
        state = self.backend.status(self.handle)
        bad = self._drain()
        if bad is not None:
            key = diverged(bad)
            return Verdict("diverged", f"{key} is {bad[key]} at step {bad['step']}", state)
        if state.finished:
            self._drain()  # the last lines written just before the exit
            completion = read_completion(self.run_dir, self.started)
            if state.phase == Phase.SUCCEEDED and completion is not None:
                return Verdict("completed", "completion record written", state, completion)
            if state.phase == Phase.SUCCEEDED:
                return Verdict("failed", f"launcher exited {state.exit_code} without rank 0's completion record", state)
            reason = state.reason or f"job {state.phase.value.lower()}"
            if any(DIVERGED_LINE.search(line) for line in self.log_tail):
                return Verdict("diverged", f"{reason}; the trainer reported a non-finite loss", state)
            errors = [line.strip() for line in self.log_tail if "error" in line.lower()]
            return Verdict("failed", f"{reason}: {errors[-1][:300]}" if errors else reason, state)
        if state.phase == Phase.RUNNING:
            return self._check_stall(state)
        return None

    def _check_stall(self, state: JobState) -> Verdict | None:
        now = self.clock()
        ages = heartbeat_ages(self.run_dir, self.started, now)
        if len(ages) < self.world_size:
            waited = now - self.started
            if waited > self.startup_timeout_s:
                return Verdict(
                    "stalled", f"{len(ages)} of {self.world_size} ranks beat within {self.startup_timeout_s:.0f}s of start", state
                )
            if ages and max(ages.values()) > self.stall_timeout_s:
                return Verdict("stalled", f"no heartbeat for {max(ages.values()):.0f}s", state)
            return None
        oldest = max(ages.values())
        if oldest > self.stall_timeout_s:
            rank = max(ages, key=ages.get)
            return Verdict("stalled", f"{rank} has not beaten for {oldest:.0f}s (limit {self.stall_timeout_s:.0f}s)", state)
        return None

    def run(self, poll_s: float = 1.0) -> Verdict:
        while True:
            verdict = self.poll()
            if verdict is not None:
                return verdict
            time.sleep(poll_s)
