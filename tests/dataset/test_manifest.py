"""Commit records, compaction at seal, the `latest` pointer, orphans: on the real S3 server."""

from __future__ import annotations

import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.dataset import DatasetVersion, Manifest, ShardEntry, ShardWriter, advance_latest, latest_uri, latest_version, read_parquet, sealed_versions
from pipeline.names import InvalidName
from pipeline.schema import DOCUMENT_SCHEMA
from pipeline.storage import ObjectStore, StorageError, join
from tests.dataset.workloads import unit_docs


class CountingStore(ObjectStore):
    """The real store, counting requests and bytes written (to show a commit's cost is flat)."""

    def __init__(self, settings):
        super().__init__(settings)
        self.calls: dict[str, int] = {}
        self.bytes_written = 0

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def list(self, prefix):
        self._count("list")
        return super().list(prefix)

    def head(self, uri):
        self._count("head")
        return super().head(uri)

    def get_bytes(self, uri):
        self._count("get")
        return super().get_bytes(uri)

    def get_with_etag(self, uri):
        self._count("get")
        return super().get_with_etag(uri)

    def put_bytes(self, uri, data, **kwargs):
        self._count("put")
        self.bytes_written += len(data)
        return super().put_bytes(uri, data, **kwargs)


def entry(version: DatasetVersion, unit: str) -> ShardEntry:
    name = f"{unit}-00000-00000000.parquet"
    return ShardEntry(name, join(version.uri, "data", name), 10, 1000, "0" * 64, unit)


def test_commit_cost_does_not_grow_with_units(s3_settings, bucket):
    store = CountingStore(s3_settings)
    version = DatasetVersion(join(bucket, "ds"), "v1", store)
    costs = []
    for i in range(60):
        store.calls, store.bytes_written = {}, 0
        version.commit_unit(f"unit-{i:04d}", [entry(version, f"unit-{i:04d}")], counts={"docs": 10})
        costs.append((dict(store.calls), store.bytes_written))
    # a HEAD before (sealed?), the PUT, a HEAD after (sealed meanwhile? then the record is withdrawn)
    assert costs[1][0] == costs[59][0] == {"head": 2, "put": 1}, "commit #60 makes the same requests as commit #2: no listing, no rewrite"
    # the same bytes but for the digits of the commit time
    assert abs(costs[1][1] - costs[59][1]) <= 8 and costs[59][1] < 600
    manifest = version.manifest()
    assert len(manifest.units) == manifest.seq == 60 and manifest.rows == 600


def test_seal_compacts_and_lists(store, bucket):
    dataset = join(bucket, "ds")
    version = DatasetVersion(dataset, "v1", store)
    with ShardWriter(version, "u", schema=DOCUMENT_SCHEMA, target_bytes=2_000) as writer:
        writer.write(unit_docs(0))
        record = writer.commit(counts={"docs": 600})
    assert version.unit("u") == record and version.has_unit("u") and not version.has_unit("other")
    manifest = version.seal(extra={"note": "x"})
    assert store.list(join(version.uri, "_commits") + "/") == []
    assert Manifest.from_json(store.get_bytes(version.manifest_uri)).units.keys() == {"u"}
    assert version.unit("u")["shards"] == record["shards"], "a unit is still found after compaction"
    assert [v["version"] for v in sealed_versions(dataset, store)] == ["v1"]
    assert manifest.rows == 600 and manifest.extra == {"note": "x"} and manifest.sealed_at > 0
    with ShardWriter(version, "u", schema=DOCUMENT_SCHEMA) as writer:
        assert writer.already_committed


def test_losing_writer_leaves_no_rows_for_a_globbing_reader(store, bucket):
    """Two attempts of the same unit race: the first commit wins and the loser deletes what it
    uploaded; globbing data/*.parquet equals the manifest before and after the seal."""
    version = DatasetVersion(join(bucket, "ds"), "v1", store)
    writers = [ShardWriter(version, "u", schema=DOCUMENT_SCHEMA) for _ in range(2)]
    for w in writers:
        w.write(unit_docs(0))
    first = writers[0].commit()
    second = writers[1].commit()
    assert second["shards"] == first["shards"], "the first commit stays"
    assert version.orphans() == [], "the losing attempt took its shard back"
    version.seal()
    globbed = sum(read_parquet(store, o.uri).num_rows for o in store.list(join(version.uri, "data") + "/"))
    assert globbed == version.manifest().rows == 600
    for w in writers:
        w.__exit__(None, None, None)


def test_a_unit_committed_after_the_seal_is_refused_and_takes_its_shards_back(store, bucket):
    """A late attempt (a timed-out task whose thread ran on) that commits after the version
    was sealed: the record is withdrawn, the unit is not reported as committed, and its shards
    are deleted, so the sealed version's data/ is exactly its manifest."""
    version = DatasetVersion(join(bucket, "ds"), "v1", store)
    late = ShardWriter(version, "late", schema=DOCUMENT_SCHEMA)
    late.write(unit_docs(0))
    with ShardWriter(version, "u", schema=DOCUMENT_SCHEMA) as writer:
        writer.write(unit_docs(1))
        writer.commit()
    version.seal()
    with pytest.raises(StorageError, match="sealed"):
        late.commit()
    late.__exit__(None, None, None)
    assert not version.has_unit("late") and version.unit("late") is None
    assert version.orphans() == [] and version.manifest().units.keys() == {"u"}


def test_a_commit_record_landing_just_after_the_seal_is_withdrawn(s3_settings, bucket):
    """The race the check before the PUT cannot see: the seal compacts and lists the version
    between that check and the record's PUT."""
    plain = ObjectStore(s3_settings)
    dataset = join(bucket, "ds")

    class SealingFirst(ObjectStore):
        def put_bytes(self, uri, data, **kwargs):
            if uri.endswith("/_commits/late.json"):
                DatasetVersion(dataset, "v1", plain).seal()
            return super().put_bytes(uri, data, **kwargs)

    version = DatasetVersion(dataset, "v1", SealingFirst(s3_settings))
    version.commit_unit("u", [entry(version, "u")])
    with pytest.raises(StorageError, match="sealed while unit late was being committed"):
        version.commit_unit("late", [entry(version, "late")])
    assert not version.has_unit("late") and version.manifest().units.keys() == {"u"}


def test_latest_pointer_never_moves_back(store, bucket):
    dataset = join(bucket, "ds")
    versions = [DatasetVersion(dataset, f"{i:08x}", store) for i in range(4)]
    manifests = []
    for v in versions:
        v.commit_unit("u", [entry(v, "u")])
    threads = [threading.Thread(target=lambda v=v: manifests.append(v.seal())) for v in versions]
    [t.start() for t in threads]
    [t.join() for t in threads]
    newest = max(manifests, key=lambda m: (m.sealed_at, m.version))
    assert latest_version(dataset, store).version == newest.version
    oldest = min(manifests, key=lambda m: (m.sealed_at, m.version))
    assert advance_latest(dataset, oldest, store) is False
    DatasetVersion(dataset, oldest.version, store).finish_seal(oldest)  # a late repair of an old seal
    assert latest_version(dataset, store).version == newest.version

    # A dataset sealed before pointers existed: readers took the newest marker. Repairing an
    # old seal (gc) creates the first pointer, and it must name the newest version, not the old one.
    store.delete(latest_uri(dataset))
    DatasetVersion(dataset, oldest.version, store).finish_seal(oldest)
    assert latest_version(dataset, store).version == newest.version


def test_unfinished_seal_is_finished_by_the_rerun(store, bucket):
    """A crash after the sealed manifest and before the marker: the version is not listed,
    and sealing again lists it (the 'already sealed' path finishes the seal)."""
    dataset = join(bucket, "ds")
    version = DatasetVersion(dataset, "v1", store)
    version.commit_unit("u", [entry(version, "u")])
    manifest = version._compact()
    manifest.sealed, manifest.sealed_at = True, 1.0
    store.put_bytes(version.manifest_uri, manifest.to_json().encode(), if_none_match=True)
    assert sealed_versions(dataset, store) == [] and version.is_sealed()
    assert any("not listed" in p for p in version.verify(checksums=False))
    version.seal()
    assert [v["version"] for v in sealed_versions(dataset, store)] == ["v1"]
    assert latest_version(dataset, store).version == "v1"


def test_dataset_names_are_validated():
    from pipeline.dataset import parse_dataset_ref, resolve_dataset_uri

    for bad in ["a/../../raw", "../x", "/abs/../etc", "s3://b/x/../y", "a//b", ""]:
        with pytest.raises(InvalidName):
            resolve_dataset_uri(bad)
    with pytest.raises(InvalidName):
        parse_dataset_ref("web@../../x")
    # a nested name must not land inside its parent's layout (`a/tokens` is `a`'s token dataset)
    for inside in ["a/tokens", "a/versions", "a/_stages", "crawl/2024/_sealed", "a/b/tokens"]:
        with pytest.raises(InvalidName, match="layout of dataset"):
            resolve_dataset_uri(inside)
    assert resolve_dataset_uri("tokens").endswith("/datasets/tokens") and resolve_dataset_uri("a/tokens-v2").endswith("/datasets/a/tokens-v2")
    assert parse_dataset_ref("s3://b/datasets/web@0123abcd") == ("s3://b/datasets/web", "0123abcd")
    assert parse_dataset_ref("s3://b/datasets/web")[1] is None


def test_small_batches_make_full_row_groups(store, bucket):
    """A filter that keeps a few hundred rows per batch (heavy dedup) wrote one row group per
    batch: bloated footers and poor compression. Row groups are ROW_GROUP_ROWS rows but the last."""
    from pipeline.dataset import ROW_GROUP_ROWS

    version = DatasetVersion(join(bucket, "ds"), "v1", store)
    docs = unit_docs(0)
    table = pa.concat_tables([docs] * (ROW_GROUP_ROWS // docs.num_rows + 2))
    with ShardWriter(version, "u", schema=DOCUMENT_SCHEMA) as writer:
        for start in range(0, table.num_rows, 300):
            writer.write(table.slice(start, 300))
        record = writer.commit()
    (shard,) = record["shards"]
    with store.open_random_access(shard["uri"]) as fh:
        meta = pq.ParquetFile(fh).metadata
    groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert groups == [ROW_GROUP_ROWS, table.num_rows - ROW_GROUP_ROWS] and shard["rows"] == table.num_rows
    assert read_parquet(store, shard["uri"]).column("id").to_pylist() == table.column("id").to_pylist()
