"""Shared fixtures: a real S3 server for the session (SeaweedFS, MinIO, or the configured
endpoint), a fresh bucket per test, the shared data folder, and Prefect's test harness."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import uuid
from pathlib import Path

import pytest

from pipeline.s3server import S3Server, start_s3_server
from pipeline.settings import ENV_S3_ENDPOINT, StorageSettings
from pipeline.storage import ObjectStore

SHARED = Path(os.environ.get("TOKENMILL_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def read_web_sample(shared: Path, n: int) -> list[dict]:
    """The first `n` pages of the shared web sample as document rows."""
    rows = []
    with gzip.open(shared / "corpora/web/web_sample.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line, _ in zip(fh, range(n)):
            doc = json.loads(line)
            rows.append({"id": doc["id"], "text": doc["text"], "source": "web_sample.jsonl.gz", "metadata": doc.get("metadata")})
    return rows


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.exists():
        pytest.fail(f"shared data folder not found at {SHARED} (set TOKENMILL_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server | None:
    """The embedded server, or None when TOKENMILL_S3_ENDPOINT points at a MinIO/S3 to use."""
    if os.environ.get(ENV_S3_ENDPOINT):
        yield None
        return
    server = start_s3_server(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_settings(s3_server) -> StorageSettings:
    return s3_server.settings if s3_server is not None else StorageSettings.from_env()


@pytest.fixture(scope="session", autouse=True)
def s3_env(s3_settings):
    """Point every ObjectStore() (and child processes) at the test server."""
    saved = {k: os.environ.get(k) for k in s3_settings.as_env()}
    os.environ.update(s3_settings.as_env())
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture()
def store(s3_settings) -> ObjectStore:
    return ObjectStore(s3_settings)


@pytest.fixture()
def bucket(store) -> str:
    """A fresh bucket per test: `s3://<bucket>`."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    store.ensure_bucket(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """Prefect's test harness (a real local API server on SQLite), shared by the session."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with contextlib.ExitStack() as stack:
        with patient_startup_probe():  # only while the server starts
            stack.enter_context(prefect_test_harness(server_startup_timeout=240))
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield


@contextlib.contextmanager
def patient_startup_probe(read_timeout: float = 60.0):
    """Prefect 3.8 probes a starting server's /health and retries only refused connections;
    on a loaded machine the server accepts the connection seconds before it answers, the
    probe's default 5 s read timeout fires and the whole session errors. Clients created
    while the harness starts get a longer read timeout (callers that pass one keep theirs);
    the startup deadline itself stays `server_startup_timeout`."""
    import functools

    import httpx

    original = httpx.Client
    httpx.Client = functools.partial(original, timeout=httpx.Timeout(10.0, read=read_timeout))
    try:
        yield
    finally:
        httpx.Client = original


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """One real single-node Slurm cluster (munged + slurmctld + slurmd) for the whole session,
    shared by the training-flow and security tests."""
    from tests.train_flow.slurm_cluster import SlurmCluster, slurm_missing

    reason = slurm_missing()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def pytest_collection_modifyitems(items):
    """For `make test`'s two workers (`-n 2 --dist loadgroup`): a module's tests share a worker,
    so its module-scoped servers start once, and every test of the Slurm cluster runs on the
    same worker, so one cluster serves them all."""
    for item in items:
        group = "slurm" if "slurm_cluster" in getattr(item, "fixturenames", ()) else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))
