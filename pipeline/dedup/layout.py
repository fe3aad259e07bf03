"""Where the dedup stages keep their intermediate data under one work folder, and small I/O helpers.

    <work>/plan.json                                   shards, their rows, config, partition counts
    <work>/docs/s<shard>.parquet                       key, id, exact hash, words, quality, crawl time
    <work>/buckets/<band-range>/s<shard>.parquet       LSH band hash, exact hash, key (sorted)
    <work>/buckets/exact-<range>/s<shard>.parquet      exact hash, key (sorted)
    <work>/pairs/p<vp>/<group>.parquet                 candidate pairs for verification partition vp
    <work>/wanted/s<shard>/<group>.parquet             rows of a shard that partitions need (text, attributes)
    <work>/texts/p<vp>/s<shard>.parquet                texts of the rows verification partition vp compares
    <work>/attrs/p<node>/s<shard>.parquet              attributes of clustered rows, by node partition
    <work>/graph/s<step>/p<node>/<from>.parquet        edges (u, v) at each connected-components step
    <work>/members/p<label>/p<node>.parquet            cluster members with attributes, by cluster label
    <work>/removals/p<label>.parquet                   the audit table, one part per label partition
    <work>/drop/s<shard>/p<label>.parquet              rows of each shard to drop, with the reason
    <work>/_done/<stage>/<name>.json                   counts; written last, so its presence = done

Shuffles write one object per (destination, source) and only for non-empty destinations; a
reader lists its destination folder once every source's done marker is there. Outputs are a
deterministic function of the inputs, so a retried writer rewrites the same bytes.

A document's key is `shard index << 32 | row`: compact, sortable, and it says where the row is.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.dataset import canonical_json, read_parquet
from pipeline.dedup.shingles import fmix64
from pipeline.storage import ObjectStore, join

ROW_BITS = 32
ROW_MASK = (1 << ROW_BITS) - 1

# One row per input document: what choosing a cluster's representative needs.
DOCS_SCHEMA = pa.schema(
    [
        ("key", pa.uint64()),
        ("id", pa.string()),
        ("exact_hi", pa.uint64()),
        ("exact_lo", pa.uint64()),
        ("words", pa.int64()),
        ("quality", pa.float64()),
        ("crawl_ms", pa.int64()),
    ]
)


def shard_name(index: int) -> str:
    return f"s{index:06d}"


def part_name(index: int) -> str:
    return f"p{index:05d}"


def plan_uri(work: str) -> str:
    return join(work, "plan.json")


def docs_uri(work: str, shard: int) -> str:
    return join(work, "docs", f"{shard_name(shard)}.parquet")


def bucket_uri(work: str, partition: str, shard: int) -> str:
    return join(work, "buckets", partition, f"{shard_name(shard)}.parquet")


def removals_dir(work: str) -> str:
    return join(work, "removals")


def done_uri(work: str, stage: str, name: str) -> str:
    return join(work, "_done", stage, f"{name}.json")


def shard_of(keys: np.ndarray) -> np.ndarray:
    return (keys >> np.uint64(ROW_BITS)).astype(np.int64)


def row_of(keys: np.ndarray) -> np.ndarray:
    return (keys & np.uint64(ROW_MASK)).astype(np.int64)


def node_partition(keys: np.ndarray, partitions: int) -> np.ndarray:
    """Which of `partitions` a document key (graph node, cluster label) belongs to."""
    return (fmix64(keys.astype(np.uint64)) % np.uint64(partitions)).astype(np.int64)


def write_table(store: ObjectStore, uri: str, table: pa.Table) -> int:
    """One Parquet object, written whole (deterministic bytes for the same table); its size."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", compression_level=3)
    store.put_bytes(uri, sink.getvalue())
    return sink.tell()


def write_json(store: ObjectStore, uri: str, obj: dict) -> None:
    store.put_bytes(uri, canonical_json(obj).encode(), content_type="application/json")


def read_json(store: ObjectStore, uri: str) -> dict | None:
    if store.head(uri) is None:
        return None
    return json.loads(store.get_bytes(uri))


class Writes:
    """A stage's writes, counted (objects, bytes) for its done marker: what the stages put on
    object storage is measured, not estimated."""

    def __init__(self, store: ObjectStore):
        self.store = store
        self.objects = 0
        self.bytes = 0

    def table(self, uri: str, table: pa.Table) -> None:
        self.bytes += write_table(self.store, uri, table)
        self.objects += 1

    def scatter(self, folder: str, dest: np.ndarray, table: pa.Table, source: str, dest_name=part_name) -> None:
        """Write the rows of `table` to `<folder>/<dest_name(d)>/<source>.parquet` for every
        destination d that gets rows (rows keep their order)."""
        if not table.num_rows:
            return
        order = np.argsort(dest, kind="stable")
        dest_sorted = dest[order]
        table = table.take(pa.array(order))
        starts = np.flatnonzero(np.concatenate([[True], dest_sorted[1:] != dest_sorted[:-1]]))
        ends = np.append(starts[1:], len(dest_sorted))
        for lo, hi in zip(starts.tolist(), ends.tolist()):
            self.table(join(folder, dest_name(int(dest_sorted[lo])), f"{source}.parquet"), table.slice(lo, hi - lo))

    def counts(self) -> dict:
        return {"objects_written": self.objects, "bytes_written": self.bytes}


def gather(store: ObjectStore, folder: str, schema: pa.Schema) -> pa.Table:
    """Every part a shuffle wrote into `folder` (sorted by name: deterministic row order)."""
    uris = sorted(o.uri for o in store.list(folder.rstrip("/") + "/") if o.uri.endswith(".parquet"))
    if not uris:
        return schema.empty_table()
    return pa.concat_tables([read_parquet(store, u).cast(schema) for u in uris])


# -- stage bookkeeping ---------------------------------------------------------------------


def done(store: ObjectStore, work: str, stage: str, name: str) -> dict | None:
    """The counts a finished stage partition recorded (marked `skipped`), or None."""
    counts = read_json(store, done_uri(work, stage, name))
    return {**counts, "skipped": True} if counts is not None else None


def finish(store: ObjectStore, work: str, stage: str, name: str, counts: dict) -> dict:
    write_json(store, done_uri(work, stage, name), counts)
    return {**counts, "skipped": False}


def finished(store: ObjectStore, work: str, stage: str) -> dict[str, dict]:
    """Every done marker of a stage, by partition name (one listing)."""
    folder = join(work, "_done", stage) + "/"
    return {o.uri.rsplit("/", 1)[1][: -len(".json")]: json.loads(store.get_bytes(o.uri)) for o in store.list(folder)}


def require_done(store: ObjectStore, work: str, stage: str, names: list[str], error: type[Exception]) -> None:
    """Raise unless every named partition of `stage` has its done marker."""
    have = {o.uri.rsplit("/", 1)[1][: -len(".json")] for o in store.list(join(work, "_done", stage) + "/")}
    missing = [n for n in names if n not in have]
    if missing:
        raise error(f"the {stage} stage has not finished for {len(missing)} partition(s), e.g. {missing[0]}")
