"""What every job backend offers: submit a distributed training job, ask its state, read its
new log lines, cancel it. The training flow talks only to this interface, so local processes,
Slurm and Kubernetes are interchangeable.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

# Set in every rank's environment so that a job's processes can be found (and killed) by
# scanning the process table even after their launcher died and they were re-parented.
JOB_ID_ENV = "TOKENMILL_JOB_ID"


class Phase(str, enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def finished(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED)


@dataclass(frozen=True)
class JobState:
    phase: Phase
    exit_code: int | None = None
    reason: str = ""

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
        if self.nodes < 1 or self.procs_per_node < 1:
            raise ValueError("nodes and procs_per_node must be at least 1")
        if not self.name or not all(ch.isalnum() or ch in "-_." for ch in self.name):
            raise ValueError(f"job name must be non-empty letters, digits, '-', '_' or '.': {self.name!r}")

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
    def cancel(self, handle: JobHandle) -> None:
        """Stop every process of the job; returns once none is left (or the scheduler has it)."""


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
