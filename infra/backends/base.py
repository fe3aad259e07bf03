"""What every job backend offers: submit a distributed training job, ask its state, read its
new log lines, cancel it. The training flow talks only to this interface, so local processes,
Slurm and Kubernetes are interchangeable.
"""

from __future__ import annotations

import enum
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

# Set in every rank's environment so that a job's processes can be found (and killed) by
# scanning the process table even after their launcher died and they were re-parented.
JOB_ID_ENV = "TOKENMILL_JOB_ID"


class BackendUnavailable(RuntimeError):
    """The scheduler or API could not be asked (a controller restarting, an API server's 5xx
    or 429, a timeout): the job's state is unknown, not failed. The watcher asks again rather
    than restarting a job that may well be running."""


class Phase(str, enum.Enum):
    PENDING = "PENDING"  # queued, scheduling, pulling images: not running any rank yet
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EXITED = "EXITED"  # finished, but the backend cannot tell how (a local job adopted from another process)

    @property
    def finished(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED, Phase.EXITED)


@dataclass(frozen=True)
class JobState:
    phase: Phase
    exit_code: int | None = None
    reason: str = ""  # for PENDING: why it waits (Slurm's Reason, pod events); when finished: how it ended
    time_limit: bool = False  # ended by a time limit or a preemption: not a failure of the job itself
    never_starts: bool = False  # PENDING for a reason that waiting will not cure (a bad partition, image, secret)

    @property
    def finished(self) -> bool:
        return self.phase.finished


@dataclass(frozen=True)
class JobSpec:
    """One distributed job: `nodes` × `procs_per_node` ranks started by torchrun.

    `command` is what torchrun runs on every rank, as torchrun's positional arguments, e.g.
    ``["-m", "model.train", "--config", "/runs/x/config.yaml"]``. The backend adds the
    launcher and its rendezvous options; nothing is ever passed through a shell.
    """

    name: str
    command: list[str]
    run_dir: str
    env: dict[str, str] = field(default_factory=dict)
    nodes: int = 1
    procs_per_node: int = 1
    cpus_per_node: int | None = None
    gpus_per_node: int = 0
    memory_gb: float | None = None
    time_limit_s: int | None = None

    def __post_init__(self) -> None:
        if not self.command:
            raise ValueError("JobSpec.command must not be empty")
        if not self.name or not all(ch.isalnum() or ch in "-_." for ch in self.name):
            raise ValueError(f"job name must be non-empty letters, digits, '-', '_' or '.': {self.name!r}")
        # Backends put these into sbatch options and manifests: exact types, never strings.
        counts = {"nodes": 1, "procs_per_node": 1, "cpus_per_node": 1, "gpus_per_node": 0, "time_limit_s": 1}
        for key, minimum in counts.items():
            value = getattr(self, key)
            if value is None and key in ("cpus_per_node", "time_limit_s"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"JobSpec.{key}: {value!r} is not an integer >= {minimum}")
        memory = self.memory_gb
        if memory is not None and (isinstance(memory, bool) or not isinstance(memory, (int, float)) or not 0 < memory < math.inf):
            raise ValueError(f"JobSpec.memory_gb: {memory!r} is not a positive number")
        if not all(isinstance(arg, str) for arg in self.command):
            raise ValueError(f"JobSpec.command: every argument must be a string: {self.command!r}")
        if not all(isinstance(key, str) and isinstance(value, str) for key, value in self.env.items()):
            raise ValueError("JobSpec.env: names and values must be strings")

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


@dataclass(frozen=True)
class JobHandle:
    """Enough to find a job again, also from another process (a cancellation hook): plain
    JSON-able data, no live objects."""

    backend: str
    job_id: str
    run_dir: str
    log_path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobHandle":
        return cls(**data)


@dataclass(frozen=True)
class LogChunk:
    lines: list[str]
    cursor: int  # pass back as `since` to get only what came after


class JobBackend(ABC):
    name: str

    @abstractmethod
    def submit(self, spec: JobSpec) -> JobHandle: ...

    @abstractmethod
    def status(self, handle: JobHandle) -> JobState: ...

    @abstractmethod
    def logs(self, handle: JobHandle, since: int = 0) -> LogChunk: ...

    @abstractmethod
    def cancel(self, handle: JobHandle) -> str | None:
        """Stop every process of the job; returns once none is left, or with a note saying
        what is still going on (a Slurm job still COMPLETING: the scheduler has it). Never
        raises for a job that is slow to go: the caller goes on (restarts, fails, reports)."""


def read_log_file(path: str, since: int) -> LogChunk:
    """New complete lines of a growing log file after byte offset `since` (a partial last line
    is left for the next call, so no line is ever split in two)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(since)
            data = fh.read()
    except FileNotFoundError:
        return LogChunk([], since)
    end = data.rfind(b"\n")
    if end < 0:
        return LogChunk([], since)
    complete = data[: end + 1]
    return LogChunk(complete.decode("utf-8", "replace").splitlines(), since + len(complete))
