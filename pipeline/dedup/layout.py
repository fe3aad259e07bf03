"""Where the dedup stages keep their intermediate data under one work folder, and small I/O helpers.

    <work>/plan.json                              shard list (shard index = position) + config
    <work>/docs/s<shard:06d>.parquet              key, id, exact hash, words per document
    <work>/buckets/<partition>/s<shard>.parquet   per LSH band (or exact-hash range): hash(es), key
    <work>/pairs/<partition>.parquet              candidate duplicate pairs (a < b)
    <work>/clusters/removals.parquet              the audit table
    <work>/clusters/drop/s<shard>.parquet         rows of each shard to drop, with the reason
    <work>/_done/<stage>/<partition>.json         counts; written last, so its presence = done

A document's key is `shard index << 32 | row`: compact, sortable, and it says where the row is.
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dataset import canonical_json
from pipeline.storage import ObjectStore, join

ROW_BITS = 32
ROW_MASK = (1 << ROW_BITS) - 1


def shard_name(index: int) -> str:
    return f"s{index:06d}"


def plan_uri(work: str) -> str:
    return join(work, "plan.json")


def docs_uri(work: str, shard: int) -> str:
    return join(work, "docs", f"{shard_name(shard)}.parquet")


def bucket_dir(work: str, partition: str) -> str:
    return join(work, "buckets", partition)


def bucket_uri(work: str, partition: str, shard: int) -> str:
    return join(bucket_dir(work, partition), f"{shard_name(shard)}.parquet")


def pairs_uri(work: str, partition: str) -> str:
    return join(work, "pairs", f"{partition}.parquet")


def removals_uri(work: str) -> str:
    return join(work, "clusters", "removals.parquet")


def drop_uri(work: str, shard: int) -> str:
    return join(work, "clusters", "drop", f"{shard_name(shard)}.parquet")


def done_uri(work: str, stage: str, name: str) -> str:
    return join(work, "_done", stage, f"{name}.json")


def write_table(store: ObjectStore, uri: str, table: pa.Table) -> None:
    """One Parquet object, written whole (deterministic bytes for the same table)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", compression_level=3)
    store.put_bytes(uri, sink.getvalue())


def write_json(store: ObjectStore, uri: str, obj: dict) -> None:
    store.put_bytes(uri, canonical_json(obj).encode(), content_type="application/json")


def read_json(store: ObjectStore, uri: str) -> dict | None:
    if store.head(uri) is None:
        return None
    return json.loads(store.get_bytes(uri))
