"""Fixtures for the training-flow tests: a small real corpus on the S3 server, and a real
single-node Slurm cluster (munged + slurmctld + slurmd) started for the session."""

from __future__ import annotations

import gzip
import json
import os
import uuid
from pathlib import Path

import pytest

from pipeline.dataset import DatasetVersion, ShardWriter
from pipeline.schema import DOCUMENT_SCHEMA, documents_from_pylist
from pipeline.storage import ObjectStore
from tests.train_flow.slurm_cluster import SlurmCluster, slurm_missing

DOCS = 120
DOCS_PER_SHARD = 60


@pytest.fixture(scope="session")
def corpus(s3_settings, shared) -> str:
    """A sealed two-shard document dataset made of real web pages; returns its URI."""
    store = ObjectStore(s3_settings)
    bucket = f"train-{uuid.uuid4().hex[:10]}"
    store.ensure_bucket(bucket)
    rows = []
    with gzip.open(shared / "corpora/web/web_sample.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            rows.append({"id": doc["id"], "text": doc["text"], "source": "web_sample.jsonl.gz"})
            if len(rows) == DOCS:
                break
    uri = f"s3://{bucket}/web"
    version = DatasetVersion(uri, "v1", store)
    for i in range(0, DOCS, DOCS_PER_SHARD):
        with ShardWriter(version, f"part{i // DOCS_PER_SHARD}", schema=DOCUMENT_SCHEMA) as writer:
            writer.write(documents_from_pylist(rows[i : i + DOCS_PER_SHARD]))
            writer.commit()
    version.seal()
    return uri


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> SlurmCluster:
    reason = slurm_missing()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture()
def runs_dir(tmp_path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


def job_env_processes(marker_value: str) -> list[int]:
    """Pids of live processes whose environment carries `marker_value` in TOKENMILL_JOB_ID (orphan check)."""
    import psutil

    from infra.backends import JOB_ID_ENV

    pids = []
    for proc in psutil.process_iter():
        try:
            if (
                proc.pid != os.getpid()
                and proc.status() != psutil.STATUS_ZOMBIE
                and marker_value in proc.environ().get(JOB_ID_ENV, "")
            ):
                pids.append(proc.pid)
        except psutil.Error:
            continue
    return pids
