"""Fixtures for the training-flow tests: a small real corpus on the S3 server (the session's
single-node Slurm cluster fixture is in tests/conftest.py)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from pipeline.dataset import DatasetVersion, write_sealed
from pipeline.schema import documents_from_pylist
from pipeline.storage import ObjectStore
from tests.conftest import read_web_sample

DOCS = 120
DOCS_PER_SHARD = 60


@pytest.fixture(scope="session")
def corpus(s3_settings, shared) -> str:
    """A sealed two-shard document dataset made of real web pages; returns its URI."""
    store = ObjectStore(s3_settings)
    bucket = f"train-{uuid.uuid4().hex[:10]}"
    store.ensure_bucket(bucket)
    uri = f"s3://{bucket}/web"
    write_sealed(DatasetVersion(uri, "v1", store), documents_from_pylist(read_web_sample(shared, DOCS)), DOCS_PER_SHARD)
    return uri


@pytest.fixture()
def runs_dir(tmp_path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


def job_env_processes(job_id: str) -> list[int]:
    """Pids of live processes whose TOKENMILL_JOB_ID is exactly `job_id` (orphan check). Exact,
    not a substring: another test run on the same machine starts jobs with similar names."""
    import psutil

    from infra.backends import JOB_ID_ENV

    pids = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(JOB_ID_ENV) == job_id:
                pids.append(proc.pid)
        except psutil.Error:
            continue
    return pids


def local_job_ids(run_dir: Path, attempt_prefix: str = "") -> list[str]:
    """The local backend's job ids of one run directory (each job logs to logs/<job id>.log)."""
    return [log.stem for log in sorted((run_dir / "logs").glob(f"{attempt_prefix}*.log"))]
