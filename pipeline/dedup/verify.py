"""Exact-Jaccard verification of candidate pairs, in parallel partitions.

A shuffle join: `gather_stage` (per input shard) sends the text of every row a verification
partition compares to that partition, and the attributes of every paired row to the graph
partition of its node; `verify_stage` (per verification partition) compares its pairs with
the shingle sets of the texts it received. No task holds more than one shard or one
partition, so memory follows `partition_docs`, not the corpus.

Verified pairs (Jaccard >= threshold) and pairs known without comparison (identical text)
become the edges of the duplicate graph, written in both directions by node partition.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from pipeline.dataset import read_parquet, read_parquet_batches
from pipeline.dedup import layout
from pipeline.dedup.candidates import PAIRS_SCHEMA, WANTED_SCHEMA, first_of_runs, ragged_arange, unique_pairs
from pipeline.dedup.config import DedupConfig, DedupError
from pipeline.dedup.shingles import bounded_slices, normalize, shingle_hashes
from pipeline.storage import ObjectStore, join

TEXTS_SCHEMA = pa.schema([("key", pa.uint64()), ("text", pa.large_string())])
EDGES_SCHEMA = pa.schema([("u", pa.uint64()), ("v", pa.uint64())])
SET_BATCH_DOCS = 1024
PAIR_CHUNK_SHINGLES = 1 << 20  # shingles compared per vectorised block (8 MiB of uint64): bounds verify's peak
# Intersections compare the low 40 bits of the 64-bit shingle hashes, with the pair index in
# the high 24: two different shingles of one pair agree there with probability 2^-40.
LOW_BITS = np.uint64(40)
LOW_MASK = np.uint64((1 << 40) - 1)


def gather_stage(shard_uri: str, work_uri: str, config: DedupConfig, store: ObjectStore, plan: dict) -> dict:
    """One shard: its rows' attributes to their node partitions, and its texts to the
    verification partitions that compare them."""
    shard = plan["shards"].index(shard_uri)
    name = layout.shard_name(shard)
    if (found := layout.done(store, work_uri, "gather", name)) is not None:
        return found
    layout.require_done(store, work_uri, "candidates", list(plan["candidate_groups"]), DedupError)
    started = time.process_time()
    wanted = layout.gather(store, join(work_uri, "wanted", name), WANTED_SCHEMA)
    keys, parts, text = (wanted.column(c).to_numpy() for c in ("key", "partition", "text"))
    # Several candidate groups ask for the same row: one (row, partition) each, text if any asked.
    order = np.lexsort([~text, parts, keys])
    keys, parts, text = keys[order], parts[order], text[order]
    first = first_of_runs(keys, parts)
    keys, parts, text = keys[first], parts[first], text[first]
    writes = layout.Writes(store)
    attr_keys = keys[first_of_runs(keys)]
    if len(attr_keys):
        docs = read_parquet(store, layout.docs_uri(work_uri, shard))
        attrs = docs.take(pa.array(layout.row_of(attr_keys)))
        if not np.array_equal(attrs.column("key").to_numpy(), attr_keys):
            raise DedupError(f"{work_uri}: docs of shard {shard} do not match the candidate keys (stale work folder?)")
        writes.scatter(join(work_uri, "attrs"), layout.node_partition(attr_keys, plan["partitions"]), attrs, name)
    text_keys, text_parts = keys[text], parts[text]
    rows = layout.row_of(text_keys)
    taken, row0 = [], 0
    if len(rows):
        for batch in read_parquet_batches(store, shard_uri, columns=["text"]):
            n = batch.num_rows
            lo, hi = np.searchsorted(rows, [row0, row0 + n])  # rows are sorted (keys are)
            if hi > lo:
                taken.append(batch.column(0).take(pa.array(rows[lo:hi] - row0)).cast(pa.large_string()))
            row0 += n
    texts = pa.table([text_keys, pa.chunked_array(taken, pa.large_string())], schema=TEXTS_SCHEMA)
    writes.scatter(join(work_uri, "texts"), text_parts, texts, name)
    counts = {"shard": shard_uri, "rows_described": int(len(attr_keys)), "texts_sent": int(len(text_keys)), **writes.counts(),
              "cpu_seconds": round(time.process_time() - started, 3)}  # fmt: skip
    return layout.finish(store, work_uri, "gather", name, counts)


def shingle_sets(texts: pa.ChunkedArray | pa.Array, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct 64-bit shingle hashes of each text, concatenated, and their offsets."""
    values, counts = [], []
    for start, stop in bounded_slices(texts, SET_BATCH_DOCS):
        sh = shingle_hashes(normalize(texts.slice(start, stop - start)), ngram)
        doc = np.repeat(np.arange(len(sh.offsets) - 1), sh.counts)
        order = np.lexsort([sh.hashes, doc])
        h, d = sh.hashes[order], doc[order]
        first = first_of_runs(d, h)
        values.append(h[first])
        counts.append(np.bincount(d[first], minlength=len(sh.offsets) - 1))
    counts_all = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    return (np.concatenate(values) if values else np.zeros(0, np.uint64)), np.concatenate([[0], np.cumsum(counts_all)]).astype(np.int64)


def pair_jaccard(values: np.ndarray, offsets: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """Jaccard similarity of the shingle sets of documents ia[i] and ib[i], vectorised in
    blocks: both sets of a pair tagged with the pair's index, sorted, and equal neighbours
    counted."""
    la, lb = offsets[ia + 1] - offsets[ia], offsets[ib + 1] - offsets[ib]
    out = np.zeros(len(ia), np.float64)
    sizes = la + lb
    block_of = np.cumsum(sizes) // PAIR_CHUNK_SHINGLES  # about PAIR_CHUNK_SHINGLES per block
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(block_of)) + 1, [len(ia)]]).tolist()
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        n = hi - lo
        tag = np.repeat(np.arange(n, dtype=np.uint64), sizes[lo:hi]) << LOW_BITS
        idx = ragged_arange(np.stack([offsets[ia[lo:hi]], offsets[ib[lo:hi]]], 1).ravel(), np.stack([la[lo:hi], lb[lo:hi]], 1).ravel())
        block = np.sort(tag | (values[idx] & LOW_MASK))
        equal = block[1:] == block[:-1]
        inter = np.bincount((block[1:][equal] >> LOW_BITS).astype(np.int64), minlength=n)
        union = sizes[lo:hi] - inter
        out[lo:hi] = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return out


def verify_stage(partition: int, work_uri: str, config: DedupConfig, store: ObjectStore, plan: dict) -> dict:
    """One verification partition: its pairs, deduplicated across bands, compared; the edges
    of the duplicate graph written by node partition."""
    name = layout.part_name(partition)
    if (found := layout.done(store, work_uri, "verify", name)) is not None:
        return found
    layout.require_done(store, work_uri, "gather", [layout.shard_name(i) for i in range(len(plan["shards"]))], DedupError)
    started = time.process_time()
    pairs = layout.gather(store, join(work_uri, "pairs", name), PAIRS_SCHEMA)
    a, b, known = unique_pairs(*(pairs.column(c).to_numpy() for c in ("a", "b", "known")))
    del pairs
    check = np.flatnonzero(~known)
    ok = known.copy()
    counts: dict = {"partition": partition, "pairs": int(len(a)), "pairs_known": int(known.sum()), "pairs_verified": int(len(check))}
    if len(check):
        texts = layout.gather(store, join(work_uri, "texts", name), TEXTS_SCHEMA)
        keys = texts.column("key").to_numpy()
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        ia, ib = np.searchsorted(keys, a[check]), np.searchsorted(keys, b[check])
        present = (ia < len(keys)) & (ib < len(keys))
        present[present] &= (keys[ia[present]] == a[check][present]) & (keys[ib[present]] == b[check][present])
        if not present.all():
            raise DedupError(f"{work_uri}: verification partition {partition} lacks the text of {int((~present).sum())} pair(s) (stale work folder?)")
        values, offsets = shingle_sets(texts.column("text").take(pa.array(order)), config.ngram)
        del texts
        jaccard = pair_jaccard(values, offsets, ia, ib)
        ok[check] = jaccard >= config.threshold
        counts["pairs_rejected"] = int((jaccard < config.threshold).sum())
    u, v = a[ok], b[ok]
    edges = pa.table([np.concatenate([u, v]), np.concatenate([v, u])], schema=EDGES_SCHEMA)
    counts["edges"] = int(len(u))
    writes = layout.Writes(store)
    writes.scatter(join(work_uri, "graph", "s000"), layout.node_partition(edges.column("u").to_numpy(), plan["partitions"]), edges, name)
    counts.update(writes.counts())
    counts["cpu_seconds"] = round(time.process_time() - started, 3)
    return layout.finish(store, work_uri, "verify", name, counts)
