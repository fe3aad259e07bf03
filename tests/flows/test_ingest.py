"""The ingest flow and the CLI around it: real Prefect harness, real S3 server, real WARCs."""

from __future__ import annotations

import subprocess
import sys

from pipeline.dataset import DatasetVersion, sealed_versions
from pipeline.storage import join


def upload_warcs(store, bucket, shared) -> list[str]:
    uris = []
    for name in ["sample-0000.warc.gz", "sample-0001.warc.gz", "whirlwind.warc.gz", "whirlwind.warc.wet.gz"]:
        uri = join(bucket, "raw", name)
        store.upload_file(shared / "corpora" / "warc" / name, uri)
        uris.append(uri)
    return uris


def test_ingest_flow_writes_sealed_version_and_resumes(prefect_harness, store, bucket, shared):
    from flows.ingest import IngestParams, ingest

    upload_warcs(store, bucket, shared)
    params = IngestParams(sources=[join(bucket, "raw", "*.gz")], dataset=join(bucket, "datasets", "crawl"), runner={"kind": "threads"})
    first = ingest(params)
    version = DatasetVersion(first["dataset"], first["version"], store)
    manifest = version.manifest()
    assert manifest.sealed and manifest.rows == first["rows"] > 0
    assert len(manifest.units) == 4
    table = version.read_table()
    assert set(table.column("source").to_pylist()) == {join(bucket, "raw", n) for n in ["sample-0000.warc.gz", "sample-0001.warc.gz", "whirlwind.warc.gz", "whirlwind.warc.wet.gz"]}
    assert all(t.strip() for t in table.column("text").to_pylist())
    assert len(set(table.column("id").to_pylist())) == table.num_rows
    assert version.verify() == []
    # the same inputs and config give the same version: nothing is read again or duplicated
    again = ingest(params)
    assert again["version"] == first["version"] and again["rows"] == first["rows"]
    assert DatasetVersion(first["dataset"], first["version"], store).manifest().seq == manifest.seq
    assert [v["version"] for v in sealed_versions(first["dataset"], store)] == [first["version"]]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, timeout=120, env=env)


def test_cli_errors_are_one_line(tmp_path):
    import os

    bad_args = run_cli("ingest", "s3://x/*.warc.gz")
    assert bad_args.returncode == 2 and "--dataset" in bad_args.stderr
    env = {**os.environ, "TOKENMILL_S3_ENDPOINT": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    unreachable = run_cli("datasets", "s3://bucket/ds", env=env)
    assert unreachable.returncode == 2
    assert unreachable.stderr.strip() == "tokenmill datasets: error: cannot reach object storage at http://127.0.0.1:9"
    missing = run_cli("remove", "--dataset", "s3://bucket/ds", "--request", str(tmp_path / "nope.json"), env=env)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no such request file" in missing.stderr
