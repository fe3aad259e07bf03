"""The staged dedup end to end on the real S3 server."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.dataset import DatasetVersion, read_parquet
from pipeline.dedup import DedupConfig, DedupError, candidates_stage, clusters_stage, plan_dedup, run_dedup, signatures_stage
from pipeline.dedup import layout
from pipeline.dedup.stages import REMOVALS_SCHEMA
from pipeline.schema import documents_from_pylist
from pipeline.storage import join
from tests.dedup.corpus import edit_words, jaccard, web_docs

CONFIG = DedupConfig(num_perm=128, threshold=0.8, verify_jaccard=True)


@pytest.fixture(scope="module")
def corpus(shared) -> dict:
    """45 real pages in 3 shards, plus planted copies whose similarity is measured, not assumed."""
    docs = web_docs(shared, 45, min_words=150)
    base = {d["id"]: d["text"] for d in docs}
    ids = sorted(base)
    exact_src, near_src, far_src = ids[3], ids[10], ids[20]
    planted = [
        # Same words, different case/punctuation/spacing: an exact duplicate after normalisation.
        {"id": "zz-exact", "text": base[exact_src].upper().replace("\n", " ;  ")},
        {"id": "zz-near", "text": edit_words(base[near_src], 0.01, seed=1)},
        {"id": "zz-far", "text": edit_words(base[far_src], 0.12, seed=2)},
        {"id": "zz-empty-1", "text": ""},
        {"id": "zz-empty-2", "text": " ... "},
        {"id": "zz-short-1", "text": "Hi there"},
        {"id": "zz-short-2", "text": "hi, THERE!"},
    ]
    assert jaccard(base[near_src], planted[1]["text"]) > 0.9
    assert jaccard(base[far_src], planted[2]["text"]) < 0.6
    rows = docs + planted
    shards = [rows[0::3], rows[1::3], rows[2::3]]
    return {"shards": shards, "exact_src": exact_src, "near_src": near_src, "far_src": far_src}


def _write_shards(store, bucket: str, shards: list[list[dict]]) -> list[str]:
    uris = []
    for i, rows in enumerate(shards):
        table = documents_from_pylist([{**r, "source": "test"} for r in rows])
        table = table.append_column("quality", pa.array([float(j) for j in range(len(rows))], pa.float32()))
        uri = join(bucket, "in", f"part-{i}.parquet")
        sink = io.BytesIO()
        pq.write_table(table, sink)
        store.put_bytes(uri, sink.getvalue())
        uris.append(uri)
    return uris


def test_run_dedup_removes_planted_duplicates(store, bucket, corpus):
    uris = _write_shards(store, bucket, corpus["shards"])
    version = DatasetVersion(join(bucket, "deduped"), "v1", store)
    result = run_dedup(uris, join(bucket, "work"), version, CONFIG, store)

    removals = read_parquet(store, join(version.uri, "dedup", "removals.parquet"))
    assert removals.schema.equals(REMOVALS_SCHEMA)
    got = {r["id"]: (r["representative"], r["stage"]) for r in removals.to_pylist()}
    assert got == {
        "zz-exact": (corpus["exact_src"], "exact"),
        "zz-near": (corpus["near_src"], "minhash"),
        "zz-short-2": ("zz-short-1", "exact"),
    }
    total = sum(len(s) for s in corpus["shards"])
    assert result["docs_in"] == total and result["kept"] == total - 3
    assert result["dropped"] == {"duplicate_exact": 2, "duplicate_minhash": 1}
    out = version.read_table()
    assert out.num_rows == total - 3 and "quality" in out.column_names
    assert not set(got) & set(out.column("id").to_pylist())
    assert {"zz-far", "zz-empty-1", "zz-empty-2"} <= set(out.column("id").to_pylist())
    # Every unit's counts add up and the audit summary matches.
    units = version.manifest().units
    assert sum(u["counts"]["kept"] for u in units.values()) == total - 3
    assert result["clusters"]["removed"] == 3 and result["signatures"][0]["docs_without_words"] >= 0
    assert sum(s["docs_without_words"] for s in result["signatures"]) == 2


def test_rerun_is_skipped_and_a_fresh_run_is_byte_identical(store, bucket, corpus):
    uris = _write_shards(store, bucket, corpus["shards"])
    config = DedupConfig(num_perm=64, threshold=0.8, hash_ranges=2)
    first = run_dedup(uris, join(bucket, "w1"), DatasetVersion(join(bucket, "d"), "v1", store), config, store)
    again = run_dedup(uris, join(bucket, "w1"), DatasetVersion(join(bucket, "d"), "v1", store), config, store)
    assert all(s["skipped"] for s in again["signatures"] + again["candidates"] + again["filter"]) and again["clusters"]["skipped"]
    assert again["kept"] == first["kept"]
    run_dedup(uris, join(bucket, "w2"), DatasetVersion(join(bucket, "d"), "v2", store), config, store)
    for rel in ["clusters/removals.parquet", "pairs/band-000-001.parquet", "pairs/exact-000.parquet", "docs/s000002.parquet"]:
        assert store.get_bytes(join(bucket, "w1", rel)) == store.get_bytes(join(bucket, "w2", rel)), rel
    # Without verification the far variant may or may not collide; the planted ones must go.
    removed = set(read_parquet(store, join(bucket, "w1", "clusters/removals.parquet")).column("id").to_pylist())
    assert {"zz-exact", "zz-near", "zz-short-2"} <= removed


def test_exact_only_and_stage_order_errors(store, bucket, corpus):
    uris = _write_shards(store, bucket, corpus["shards"])
    work = join(bucket, "w")
    config = DedupConfig(minhash=False, exact=True)
    with pytest.raises(DedupError, match="plan"):
        signatures_stage(uris[0], work, config, store)
    plan = plan_dedup(uris, work, config, store)
    assert plan["partitions"] == ["exact-000"]
    with pytest.raises(DedupError, match="another config"):
        plan_dedup(uris, work, DedupConfig(), store)
    signatures_stage(uris[0], work, config, store)
    with pytest.raises(DedupError, match="signatures stage has not finished"):
        candidates_stage("exact-000", work, config, store)
    for uri in uris[1:]:
        signatures_stage(uri, work, config, store)
    with pytest.raises(DedupError, match="candidates stage"):
        clusters_stage(work, config, store)
    candidates_stage("exact-000", work, config, store)
    counts = clusters_stage(work, config, store)
    assert counts["removed_by_stage"] == {"exact": 2}
    removals = read_parquet(store, layout.removals_uri(work))
    assert sorted(removals.column("id").to_pylist()) == ["zz-exact", "zz-short-2"]
    drops = [read_parquet(store, layout.drop_uri(work, i)).num_rows for i in range(3)]
    assert sum(drops) == 2
    assert pc.all(pc.equal(removals.column("stage"), "exact")).as_py()


def test_empty_shard_and_no_duplicates(store, bucket):
    tables = [documents_from_pylist([{"id": "a", "text": "one two three four five six", "source": "t"}, {"id": "b", "text": "", "source": "t"}]), documents_from_pylist([])]
    uris = []
    for i, table in enumerate(tables):
        sink = io.BytesIO()
        pq.write_table(table, sink)
        uris.append(join(bucket, f"in/{i}.parquet"))
        store.put_bytes(uris[-1], sink.getvalue())
    version = DatasetVersion(join(bucket, "d"), "v1", store)
    result = run_dedup(uris, join(bucket, "w"), version, DedupConfig(num_perm=32), store)
    assert result["kept"] == 2 and result["dropped"] == {} and result["clusters"]["removed"] == 0
    assert read_parquet(store, join(version.uri, "dedup", "removals.parquet")).num_rows == 0
