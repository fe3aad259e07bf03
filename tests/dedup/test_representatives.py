"""Which copy of a cluster is kept: most words, then quality, then earliest crawl, then id."""

from __future__ import annotations

import datetime as dt
import io

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dataset import DatasetVersion
from pipeline.dedup import DedupConfig, read_removals, run_dedup
from pipeline.schema import documents_from_pylist
from pipeline.storage import join
from tests.dedup.corpus import jaccard, web_docs


def test_the_most_complete_copy_is_kept_by_the_documented_rule(store, bucket, shared):
    pages = [d["text"] for d in web_docs(shared, 40, min_words=300)]
    original, q_text, r_text, s_text = pages[0], pages[1], pages[2], pages[3]
    words = original.split(" ")
    truncated = " ".join(words[: int(len(words) * 0.93)])
    lines = original.split("\n")
    longest_line = max(range(len(lines)), key=lambda i: len(lines[i]) if len(lines[i].split()) < len(words) * 0.04 else 0)
    dropped = "\n".join(lines[:longest_line] + lines[longest_line + 1 :])
    assert jaccard(original, truncated) >= 0.85 and jaccard(original, dropped) >= 0.85
    day = lambda y: dt.datetime(y, 1, 1, tzinfo=dt.timezone.utc)  # noqa: E731
    rows = [
        # Under "smallest id" the truncated copy ("a1") was kept; the rule keeps the original.
        {"id": "a1", "text": truncated, "quality": 0.9, "crawl": day(2019)},
        {"id": "a2", "text": dropped, "quality": 0.9, "crawl": day(2019)},
        {"id": "z9", "text": original, "quality": 0.1, "crawl": day(2024)},
        # Same words: the higher quality score wins over the smaller id and earlier crawl.
        {"id": "q-a", "text": q_text.upper(), "quality": 0.2, "crawl": day(2019)},
        {"id": "q-b", "text": q_text, "quality": 0.8, "crawl": day(2024)},
        # Same words and quality: the earliest crawl; a missing score sorts last.
        {"id": "r-a", "text": r_text, "quality": 0.5, "crawl": day(2023)},
        {"id": "r-b", "text": r_text.lower(), "quality": 0.5, "crawl": day(2020)},
        {"id": "r-c", "text": r_text.upper(), "quality": None, "crawl": day(2010)},
        # Nothing else differs: the smallest id.
        {"id": "s-b", "text": s_text, "quality": None, "crawl": None},
        {"id": "s-a", "text": s_text.upper(), "quality": None, "crawl": None},
    ]
    uris = []
    for i, part in enumerate([rows[0::2], rows[1::2]]):
        table = documents_from_pylist([{"id": r["id"], "text": r["text"], "source": "t", "crawl_timestamp": r["crawl"]} for r in part])
        table = table.append_column("quality", pa.array([r["quality"] for r in part], pa.float32()))
        sink = io.BytesIO()
        pq.write_table(table, sink)
        uris.append(join(bucket, f"in/{i}.parquet"))
        store.put_bytes(uris[-1], sink.getvalue())
    version = DatasetVersion(join(bucket, "d"), "v1", store)
    config = DedupConfig(num_perm=120, threshold=0.8, verify_jaccard=True, quality_column="quality")
    run_dedup(uris, join(bucket, "w"), version, config)
    representative = {r["id"]: r["representative"] for r in read_removals(version).to_pylist()}
    assert representative == {"a1": "z9", "a2": "z9", "q-a": "q-b", "r-a": "r-b", "r-c": "r-b", "s-b": "s-a"}
    kept = set(version.read_table(columns=["id"]).column("id").to_pylist())
    assert kept == {"z9", "q-b", "r-b", "s-a"}


def test_crawl_times_finer_than_a_millisecond_are_read(store, bucket, shared):
    """An imported shard may carry microsecond crawl times (a safe cast to ms refused them and
    failed the signatures stage on every retry); the earlier crawl is kept."""
    text = web_docs(shared, 5, min_words=300)[0]["text"]
    crawl = pa.array([dt.datetime(2024, 5, 1, 0, 0, 1, 999_999), dt.datetime(2024, 5, 1, 0, 0, 0, 1)], pa.timestamp("us", tz="UTC"))
    table = documents_from_pylist([{"id": i, "text": t, "source": "t"} for i, t in (("a", text), ("b", text.upper()))])
    table = table.set_column(table.schema.get_field_index("crawl_timestamp"), "crawl_timestamp", crawl)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    uri = join(bucket, "us/0.parquet")
    store.put_bytes(uri, sink.getvalue())
    version = DatasetVersion(join(bucket, "us-d"), "v1", store)
    run_dedup([uri], join(bucket, "us-w"), version, DedupConfig(num_perm=120, threshold=0.8, verify_jaccard=True))
    assert {r["id"]: r["representative"] for r in read_removals(version).to_pylist()} == {"a": "b"}
