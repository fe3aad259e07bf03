"""Watching one attempt of a training job: the signals the trainer leaves in its run directory
(rank 0's metrics JSONL, per-rank heartbeat files, completion / stop / failure records, see
model/metrics.py) plus the backend's job state, turned into one verdict.

Outcomes: `completed`; `interrupted` (a time limit or preemption: the trainer checkpointed on
SIGTERM, or the scheduler ended it; not a failure); `diverged` (the trainer's health check,
with the step where it began); `config_error` and `queue_timeout` (retrying will not help);
`stalled`; `failed`.

The clocks: `queue_timeout_s` while the backend reports the job PENDING (with the scheduler's
reason), `startup_timeout_s` from the moment it runs until every rank beats and leaves its
`init` phase, then `stall_timeout_s` for liveness and for progress in training, and
`phase_timeout_s` for one checkpoint save or load or evaluation (they beat while they work).

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

from infra.backends import BackendUnavailable, JobBackend, JobHandle, JobState, Phase
from infra.backends.base import read_log_file
from model.metrics import HEARTBEAT_INTERVAL_S

METRICS_FILE = "metrics.jsonl"
COMPLETION_FILE = "COMPLETED.json"
STOPPED_FILE = "STOPPED.json"
FAILURES_DIR = "failures"
HEARTBEAT_DIR = "heartbeat"
BOUNDED_PHASES = ("load", "save", "eval")
# A rank that finished (phase `exit`) or wrote a failure record is on its way out; its launcher
# ends the job within torchrun's own 30 s SIGTERM-to-SIGKILL grace. Longer than this: stuck.
EXIT_GRACE_S = 60.0
# A heartbeat this much older than the freshest one: that rank's process stopped beating.
SILENT_MARGIN_S = 2 * HEARTBEAT_INTERVAL_S + 1.0
# The trainer's last words when it cannot go on: `model.train: error (rank N): <kind>: <message>`.
TRAINER_ERROR = re.compile(r"model\.train: error \(rank (\d+)\): (\w+): (.*)")
# torchrun's failure report (torch.distributed.elastic ChildFailedError), field by field.
REPORT_FIELD = re.compile(r"^\s*(?:\[node \S+\] )?\s*(time|host|rank|exitcode|error_file|traceback)\s*: (.*)$")
OUTCOME_OF_KIND = {"diverged": "diverged", "config": "config_error", "error": "failed"}


@dataclass
class Verdict:
    outcome: str  # completed | interrupted | diverged | config_error | queue_timeout | stalled | failed
    reason: str
    state: JobState | None = None
    completion: dict | None = None
    details: dict = field(default_factory=dict)  # the trainer's failure or stop record

    @property
    def ok(self) -> bool:
        return self.outcome == "completed"

    @property
    def will_recur(self) -> bool:
        """Retrying the same thing would fail the same way."""
        return self.outcome in ("config_error", "queue_timeout")


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


@dataclass
class Beat:
    """One rank's heartbeat as the watcher sees it: `age` from the file's mtime (liveness),
    the rest from its content (progress and phase ages measured on the rank's clock, plus the
    time since it was written)."""

    rank: int
    age: float
    phase: str = "train"
    step: int | None = None
    phase_age: float = 0.0
    progress_age: float = 0.0
    where: str = ""  # "pid P on host H"


def read_heartbeats(run_dir: Path, since: float, now: float, world_size: int) -> dict[int, Beat]:
    """This attempt's heartbeats by rank (files older than `since` belong to an earlier attempt)."""
    beats = {}
    for path in (run_dir / HEARTBEAT_DIR).glob("rank*"):
        try:
            rank = int(path.name[4:])
            mtime = path.stat().st_mtime
            text = path.read_text()
        except (ValueError, OSError):
            continue
        if mtime < since or rank >= world_size:
            continue
        try:
            content = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError:
            content = {}
        age = max(0.0, now - mtime)
        beats[rank] = Beat(
            rank=rank,
            age=age,
            phase=content.get("phase", "train"),
            step=content.get("step"),
            phase_age=content.get("phase_age_s", 0.0) + age,
            progress_age=content.get("progress_age_s", 0.0) + age,
            where=f"pid {content['pid']} on {content['host']}" if "pid" in content and "host" in content else "",
        )
    return beats


def _read_record(path: Path, since: float) -> dict | None:
    """A JSON record written during this attempt, if any."""
    try:
        if path.stat().st_mtime < since:
            return None
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def read_completion(run_dir: Path, since: float) -> dict | None:
    """Rank 0's completion record, if it was written during this attempt."""
    return _read_record(run_dir / COMPLETION_FILE, since)


def read_failures(run_dir: Path, since: float) -> list[dict]:
    """The ranks' failure records of this attempt, the most telling first: a divergence, then a
    configuration error, then other errors; among equals the earliest."""
    records = [r for p in (run_dir / FAILURES_DIR).glob("rank*.json") if (r := _read_record(p, since))]
    order = {"diverged": 0, "config": 1}
    return sorted(records, key=lambda r: (order.get(r.get("kind"), 2), r.get("time", 0), r.get("rank", 0)))


def torchrun_root_cause(lines: list[str]) -> str | None:
    """The first failed rank from torchrun's failure report, in words: which rank, where, and
    whether it exited with a code or was killed by a signal."""
    fields: dict[str, str] = {}
    for line in lines:
        if "Root Cause" in line:
            fields = {}
        elif match := REPORT_FIELD.match(line):
            fields.setdefault(match.group(1), match.group(2).strip())
    if "rank" not in fields:
        return None
    rank = fields["rank"].split()[0]
    code = re.match(r"(-?\d+)(?: \(pid: (\d+)\))?", fields.get("exitcode", ""))
    where = ", ".join(p for p in (f"pid {code.group(2)}" if code and code.group(2) else "", f"host {fields['host']}" if "host" in fields else "") if p)
    signal_name = re.search(r"Signal \d+ \((\w+)\)", fields.get("traceback", ""))
    if signal_name:
        what = f"was killed by {signal_name.group(1)}"
    elif code:
        what = f"exited with code {code.group(1)}"
    else:
        what = "failed"
    return f"rank {rank}{f' ({where})' if where else ''} {what}"


def trainer_error(lines: list[str]) -> tuple[str, str] | None:
    """(kind, 'rank N: message') from the trainer's last error line in the log, if any."""
    for line in reversed(lines):
        if match := TRAINER_ERROR.search(line):
            return match.group(2), f"rank {match.group(1)}: {match.group(3).strip()}"
    return None


class AttemptWatcher:
    """Polls one submitted (or adopted) job until it gives a verdict."""

    def __init__(
        self,
        backend: JobBackend,
        handle: JobHandle,
        *,
        world_size: int,
        metrics: MetricsLog,
        stall_timeout_s: float,
        startup_timeout_s: float,
        queue_timeout_s: float = math.inf,
        phase_timeout_s: float = 3600.0,
        on_log_lines: Callable[[list[str]], None] = lambda lines: None,
        on_metrics: Callable[[list[dict]], None] = lambda records: None,
        on_pending: Callable[[str], None] = lambda reason: None,
        unavailable_timeout_s: float = 1800.0,
        on_unavailable: Callable[[str], None] = lambda reason: None,
        clock: Callable[[], float] = time.time,
        since: float | None = None,
    ):
        self.backend = backend
        self.handle = handle
        self.run_dir = Path(handle.run_dir)
        self.world_size = world_size
        self.metrics = metrics
        self.stall_timeout_s = stall_timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.queue_timeout_s = queue_timeout_s
        self.phase_timeout_s = phase_timeout_s
        self.on_log_lines = on_log_lines
        self.on_metrics = on_metrics
        self.on_pending = on_pending
        self.unavailable_timeout_s = unavailable_timeout_s
        self.on_unavailable = on_unavailable
        self.unavailable_since: float | None = None
        self.clock = clock
        self.submitted = clock()
        # Records and heartbeats older than this belong to an earlier attempt (an adopted job
        # passes its submission time).
        self.since = since if since is not None else self.submitted
        self.running_since: float | None = None
        self.pending_reason: str | None = None
        self.log_cursor = 0
        self.log_tail: deque[str] = deque(maxlen=200)

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
        try:
            state = self.backend.status(self.handle)
            bad = self._drain()
        except BackendUnavailable as exc:
            return self._unavailable(exc)
        if self.unavailable_since is not None:
            self.on_unavailable(f"the job's backend answers again after {self.clock() - self.unavailable_since:.0f}s")
            self.unavailable_since = None
        if bad is not None:  # a trainer that logs a non-finite loss and carries on
            key = diverged(bad)
            return Verdict("diverged", f"{key} is {bad[key]} at step {bad['step']}", state, details={"step": bad["step"], "since_step": bad["step"]})
        if state.finished:
            self._drain()  # the last lines written just before the exit
            return self._classify_end(state)
        if state.phase == Phase.PENDING:
            return self._check_queue(state)
        if self.running_since is None:
            self.running_since = self.clock()
        return self._check_stall(state)

    def _unavailable(self, exc: BackendUnavailable) -> None:
        """No verdict while the scheduler cannot be asked: the job may be running fine, and a
        restart would run it twice. Past `unavailable_timeout_s` the flow gives up (raises)."""
        now = self.clock()
        if self.unavailable_since is None:
            self.unavailable_since = now
            self.on_unavailable(f"cannot ask about job {self.handle.job_id}, asking again: {exc}")
        elif now - self.unavailable_since > self.unavailable_timeout_s:
            raise BackendUnavailable(f"{exc} (for {now - self.unavailable_since:.0f}s; job {self.handle.job_id} may still be running)") from exc
        return None

    def _check_queue(self, state: JobState) -> Verdict | None:
        reason = state.reason or "pending"
        if reason != self.pending_reason:
            self.pending_reason = reason
            self.on_pending(reason)
        if state.never_starts:
            return Verdict("config_error", f"the scheduler will never start this job: {reason}", state)
        waited = self.clock() - self.submitted
        if waited > self.queue_timeout_s:
            return Verdict("queue_timeout", f"still waiting to start after {waited:.0f}s (queue_timeout_s {self.queue_timeout_s:.0f}): {reason}", state)
        return None

    def _classify_end(self, state: JobState) -> Verdict:
        completion = read_completion(self.run_dir, self.since)
        if completion is not None and state.phase != Phase.CANCELLED:
            # Rank 0's last act, after the final checkpoint: the run is done even when a rank
            # died in teardown afterwards (a non-zero exit is reported, not retried).
            how = "" if state.phase in (Phase.SUCCEEDED, Phase.EXITED) else f" (then the job ended {state.phase.value.lower()}: {state.reason or f'exit {state.exit_code}'})"
            return Verdict("completed", "completion record written" + how, state, completion)
        stopped = _read_record(self.run_dir / STOPPED_FILE, self.since)
        if stopped is not None:
            return Verdict("interrupted", f"stopped at step {stopped.get('step')} with a checkpoint ({stopped.get('reason')})", state, details=stopped)
        if state.time_limit:
            return Verdict("interrupted", f"{state.reason}: the job reached its time limit or was preempted before it could checkpoint", state)
        if state.phase == Phase.SUCCEEDED and not read_failures(self.run_dir, self.since):
            return Verdict("failed", f"launcher exited {state.exit_code} without rank 0's completion record", state)
        return self._failure(state)

    def _failure(self, state: JobState) -> Verdict:
        """Why the job failed, the cause before its consequences: a divergence or a bad config
        the trainer reported; else a rank killed by a signal (the others then fail in their
        collectives); else the first rank's own error; else torchrun's report or the backend's."""
        failures = read_failures(self.run_dir, self.since)
        lines = list(self.log_tail)
        cause = torchrun_root_cause(lines)
        reason = state.reason or f"job {state.phase.value.lower()}"
        if failures and failures[0].get("kind") in ("diverged", "config"):
            first = failures[0]
            return Verdict(OUTCOME_OF_KIND[first["kind"]], f"rank {first.get('rank')}: {first.get('message')}", state, details=first)
        if cause and "killed by" in cause:
            return Verdict("failed", f"{cause} ({reason})", state)
        if failures:
            first = failures[0]
            return Verdict("failed", f"rank {first.get('rank')}: {first.get('message')}", state, details=first)
        error = trainer_error(lines)
        if error is not None:
            kind, message = error
            return Verdict(OUTCOME_OF_KIND.get(kind, "failed"), message, state)
        return Verdict("failed", f"{cause} ({reason})" if cause else reason, state)

    def _check_stall(self, state: JobState) -> Verdict | None:
        now = self.clock()
        running_for = now - (self.running_since or now)
        failures = read_failures(self.run_dir, self.since)
        if failures:  # a rank gave up: the launcher is taking the job down
            if now - min(f.get("time", now) for f in failures) > EXIT_GRACE_S:
                verdict = self._failure(state)
                return Verdict(verdict.outcome, f"{verdict.reason}; the job did not end within {EXIT_GRACE_S:.0f}s", state, details=verdict.details)
            return None
        beats = read_heartbeats(self.run_dir, self.since, now, self.world_size)
        missing = [r for r in range(self.world_size) if r not in beats]
        if missing and running_for > self.startup_timeout_s:
            return Verdict("stalled", f"rank(s) {', '.join(map(str, missing))} never beat within {self.startup_timeout_s:.0f}s of the job starting ({len(beats)} of {self.world_size} up)", state)
        for beat in beats.values():
            if beat.phase == "exit" and beat.phase_age > EXIT_GRACE_S:
                return Verdict("stalled", f"rank{beat.rank} finished {beat.phase_age:.0f}s ago but the job has not ended", state)
        live = {r: b for r, b in beats.items() if b.phase != "exit"}
        freshest = min((b.age for b in live.values()), default=0.0)
        if live and freshest > self.stall_timeout_s:
            return Verdict("stalled", f"no rank has beaten for {freshest:.0f}s: every process stopped or hung, or the run directory is not shared with them", state)
        silent = sorted((b for b in live.values() if b.age - freshest > SILENT_MARGIN_S), key=lambda b: -b.age)
        for beat in silent:
            if beat.age > self.stall_timeout_s:
                return Verdict("stalled", f"{self._describe(beat)} stopped beating {beat.age:.0f}s ago: stopped, killed or hung; the other ranks wait for it", state)
        for beat in live.values():
            if beat.phase == "init" and running_for > self.startup_timeout_s:
                return Verdict("stalled", f"rank{beat.rank} still starting up {running_for:.0f}s after the job started (startup_timeout_s {self.startup_timeout_s:.0f})", state)
            if beat.phase in BOUNDED_PHASES and beat.phase_age > self.phase_timeout_s:
                return Verdict("stalled", f"rank{beat.rank} has been in phase {beat.phase} for {beat.phase_age:.0f}s (phase_timeout_s {self.phase_timeout_s:.0f}) after step {beat.step}", state)
        if missing or not live or any(b.phase != "train" for b in live.values()):
            return None  # starting up, finishing, or the others wait for a rank that loads, saves or evaluates
        newest = min(b.progress_age for b in live.values())
        if newest > self.stall_timeout_s:
            if silent:
                return Verdict("stalled", f"{self._describe(silent[0])} stopped beating {silent[0].age:.0f}s ago (stopped, killed or hung); no rank has made progress for {newest:.0f}s", state)
            behind = min(b.step or 0 for b in live.values())
            laggards = [f"rank{b.rank}" for b in live.values() if (b.step or 0) == behind]
            return Verdict("stalled", f"no rank has made progress for {newest:.0f}s (limit {self.stall_timeout_s:.0f}s); {', '.join(laggards)} at step {behind}: all alive, so hung or waiting in a collective", state)
        return None

    @staticmethod
    def _describe(beat: Beat) -> str:
        return f"rank{beat.rank}" + (f" ({beat.where}, phase {beat.phase}, after step {beat.step})" if beat.where else "")

    def run(self, poll_s: float = 1.0) -> Verdict:
        while True:
            verdict = self.poll()
            if verdict is not None:
                return verdict
            time.sleep(poll_s)
