"""Settings read from the environment: the one place that names tokenmill's variables.

Every service (CLI, flows, workers, training ranks, compose file, Kubernetes manifests)
reads the same names, so a value set once reaches all of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_S3_ENDPOINT = "TOKENMILL_S3_ENDPOINT"
ENV_S3_REGION = "TOKENMILL_S3_REGION"
ENV_AWS_REGION = "AWS_REGION"  # read when TOKENMILL_S3_REGION is unset, as AWS tools do
ENV_ACCESS_KEY = "AWS_ACCESS_KEY_ID"
ENV_SECRET_KEY = "AWS_SECRET_ACCESS_KEY"
ENV_SESSION_TOKEN = "AWS_SESSION_TOKEN"
ENV_DATA_ROOT = "TOKENMILL_DATA_ROOT"
ENV_HOME = "TOKENMILL_HOME"
ENV_DASK_ADDRESS = "TOKENMILL_DASK_ADDRESS"
ENV_SHARED = "TOKENMILL_SHARED"  # folder of third-party data: lid.176 model, toxicity training set, samples
ENV_REFRESH_CRON = "TOKENMILL_REFRESH_CRON"  # schedule of the served corpus refresh
ENV_REFRESH_DATASET = "TOKENMILL_REFRESH_DATASET"  # dataset the scheduled refresh writes and training follows
ENV_LEASE_TTL = "TOKENMILL_LEASE_TTL_S"  # seconds a dataset lease outlives its holder's last renewal

DEFAULT_REGION = "us-east-1"
DEFAULT_DATA_ROOT = "s3://tokenmill"


@dataclass(frozen=True)
class StorageSettings:
    """How to reach object storage. `endpoint` None means AWS S3 itself."""

    endpoint: str | None = None
    region: str = DEFAULT_REGION
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None

    @classmethod
    def from_env(cls) -> "StorageSettings":
        return cls(
            endpoint=os.environ.get(ENV_S3_ENDPOINT) or None,
            region=os.environ.get(ENV_S3_REGION) or os.environ.get(ENV_AWS_REGION) or DEFAULT_REGION,
            access_key=os.environ.get(ENV_ACCESS_KEY) or None,
            secret_key=os.environ.get(ENV_SECRET_KEY) or None,
            session_token=os.environ.get(ENV_SESSION_TOKEN) or None,
        )

    def __repr__(self) -> str:  # never print secrets
        return f"StorageSettings(endpoint={self.endpoint!r}, region={self.region!r}, access_key={'set' if self.access_key else None})"

    def as_env(self) -> dict[str, str]:
        """The variables a child process (a worker, a training rank) needs to reach the same store."""
        env = {ENV_S3_REGION: self.region}
        if self.endpoint:
            env[ENV_S3_ENDPOINT] = self.endpoint
        if self.access_key:
            env[ENV_ACCESS_KEY] = self.access_key
        if self.secret_key:
            env[ENV_SECRET_KEY] = self.secret_key
        if self.session_token:
            env[ENV_SESSION_TOKEN] = self.session_token
        return env


def data_root() -> str:
    """Where datasets live unless a flow is told otherwise (an s3:// URI or a local path)."""
    return os.environ.get(ENV_DATA_ROOT) or DEFAULT_DATA_ROOT


def lease_ttl_s() -> int:
    """How long a crashed refresh keeps its dataset locked: renewals come every third of it."""
    return int(os.environ.get(ENV_LEASE_TTL) or 120)


def tokenmill_home() -> Path:
    """Local state: the embedded S3 server's data, the local Prefect database, caches."""
    return Path(os.environ.get(ENV_HOME) or Path.home() / ".tokenmill")


def shared_dir() -> Path:
    """Third-party data (models, labelled sets, samples): $TOKENMILL_SHARED, else `../shared`
    beside the checkout, where the development machines and CI keep it."""
    return Path(os.environ.get(ENV_SHARED) or Path(__file__).resolve().parents[2] / "shared")
