"""Shard writer and manifest log on the real S3 server: atomic units, races, sealing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pyarrow as pa
import pytest

from pipeline.dataset import DatasetVersion, ShardWriter, latest_version, make_version_id, sealed_versions
from pipeline.schema import DOCUMENT_SCHEMA, documents_from_pylist
from pipeline.storage import StorageError, join


def docs(n: int, prefix: str = "d") -> pa.Table:
    return documents_from_pylist([{"id": f"{prefix}{i:05d}", "text": f"document {i} " * 40, "source": "s3://src/x"} for i in range(n)])


def test_writer_rolls_shards_and_commits_once(store, bucket):
    version = DatasetVersion(join(bucket, "ds"), "v1", store)
    with ShardWriter(version, "unit-a", schema=DOCUMENT_SCHEMA, target_bytes=20_000) as writer:
        for batch in docs(2000).to_batches(max_chunksize=250):
            writer.write(batch)
        record = writer.commit(counts={"kept": 2000})
    manifest = version.manifest()
    assert len(record["shards"]) == len(manifest.shards) > 1 and manifest.rows == 2000
    assert all(s["uri"].endswith(".parquet") and s["sha256"] for s in manifest.shards)
    assert manifest.schema_version == "1"
    table = version.read_table()
    assert table.column("id").to_pylist() == [f"d{i:05d}" for i in range(2000)]
    assert version.verify() == [] and version.orphans() == []
    # committing the same unit again is a no-op: nothing is listed twice
    with ShardWriter(version, "unit-a", schema=DOCUMENT_SCHEMA) as writer:
        writer.write(docs(5))
        again = writer.commit()
    assert again == record and version.read_table().num_rows == 2000


def test_killed_between_data_and_manifest_leaves_nothing_visible(store, bucket, s3_settings):
    dataset = join(bucket, "ds")
    child = textwrap.dedent(
        f"""
        import os, signal
        from pipeline.dataset import DatasetVersion, ShardWriter
        from pipeline.schema import DOCUMENT_SCHEMA, documents_from_pylist
        # die exactly after the data objects are uploaded, before the manifest is written
        DatasetVersion.commit_unit = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        version = DatasetVersion({dataset!r}, "v1")
        rows = [{{"id": str(i), "text": "x " * 500, "source": "s"}} for i in range(3000)]
        with ShardWriter(version, "unit-k", schema=DOCUMENT_SCHEMA, target_bytes=10_000) as w:
            w.write(documents_from_pylist(rows))
            w.commit()
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], env={**__import__("os").environ, **s3_settings.as_env()}, timeout=120)
    assert proc.returncode == -9
    version = DatasetVersion(dataset, "v1", store)
    leftovers = version.orphans()
    assert leftovers, "the data objects were uploaded"
    assert version.shard_uris() == []
    with pytest.raises(StorageError, match="no committed shards"):
        version.read_table()
    # a re-run of the unit commits cleanly; the dead attempt's objects stay invisible until collected
    with ShardWriter(version, "unit-k", schema=DOCUMENT_SCHEMA, target_bytes=10_000) as writer:
        writer.write(docs(3000, "k"))
        writer.commit()
    assert version.read_table().num_rows == 3000
    assert version.orphans() == leftovers
    assert version.delete_orphans() == len(leftovers) and version.orphans() == []
    assert version.read_table().num_rows == 3000


def test_concurrent_units_all_land(store, bucket):
    version = DatasetVersion(join(bucket, "ds"), "v1", store)

    def write_unit(i: int) -> None:
        with ShardWriter(version, f"unit-{i}", schema=DOCUMENT_SCHEMA) as writer:
            writer.write(docs(10, f"u{i}-"))
            writer.commit()

    threads = [threading.Thread(target=write_unit, args=(i,)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    manifest = version.manifest()
    assert sorted(manifest.units) == [f"unit-{i}" for i in range(6)]
    assert manifest.rows == 60 and manifest.seq == 6


def test_seal_lists_version_and_refuses_commits(store, bucket):
    dataset = join(bucket, "ds")
    version = DatasetVersion(dataset, make_version_id([("s3://x/a", "etag", 1)], {"k": 1}, "0.1.0"), store)
    with ShardWriter(version, "u", schema=DOCUMENT_SCHEMA) as writer:
        writer.write(docs(3))
        writer.commit()
    version.seal(extra={"note": "done"})
    assert version.seal().seq == version.manifest().seq  # sealing twice changes nothing
    assert [v["version"] for v in sealed_versions(dataset, store)] == [version.version]
    assert latest_version(dataset, store).version == version.version
    with pytest.raises(StorageError, match="sealed"):
        version.commit_unit("another", [])


def test_quarantine_is_committed_with_the_unit(store, bucket):
    from pipeline.schema import quarantine_row, quarantine_table

    version = DatasetVersion(join(bucket, "ds"), "v1", store)
    bad = quarantine_table([quarantine_row("s3://src/a.warc.gz", 123, "bad_warc_header", "no WARC/1.0 line", raw=b"GARBAGE")])
    with ShardWriter(version, "u", schema=DOCUMENT_SCHEMA) as writer:
        writer.write(docs(2))
        record = writer.commit(quarantine=bad)
    assert record["quarantine"]["reasons"] == {"bad_warc_header": 1}
    assert version.manifest().units["u"]["quarantine"]["reasons"] == {"bad_warc_header": 1}
    assert len(version.quarantine_uris()) == 1
