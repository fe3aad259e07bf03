"""Job backends: one interface (submit, status, logs, cancel) over local processes, Slurm and
Kubernetes. `make_backend("slurm", slurm_conf=...)` builds one by name."""

from __future__ import annotations

from typing import Any

from infra.backends.base import JOB_ID_ENV, BackendUnavailable, JobBackend, JobHandle, JobSpec, JobState, LogChunk, Phase

BACKENDS = ("local", "slurm", "kubernetes")


def make_backend(name: str, **options: Any) -> JobBackend:
    if name == "local":
        from infra.backends.local import LocalBackend

        return LocalBackend(**options)
    if name == "slurm":
        from infra.backends.slurm import SlurmBackend

        return SlurmBackend(**options)
    if name == "kubernetes":
        from infra.backends.kubernetes import KubernetesBackend

        return KubernetesBackend(**options)
    raise ValueError(f"unknown job backend {name!r} (choose from {', '.join(BACKENDS)})")


__all__ = ["BACKENDS", "JOB_ID_ENV", "BackendUnavailable", "JobBackend", "JobHandle", "JobSpec", "JobState", "LogChunk", "Phase", "make_backend"]
