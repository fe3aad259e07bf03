"""Candidate pairs: documents that share an LSH bucket (or the exact hash), per partition group.

Within a bucket, members with the same normalised text (same 128-bit exact hash... its high
half orders the bucket) are one copy: each is linked to the first without verification. The
distinct copies of a bucket are then paired so that verification sees every pair that
matters, whatever the order of the input:

  * up to `bucket_pivots + 1` distinct members: every pair (exhaustive);
  * larger buckets (templated pages: shops, forums, error pages): each of the first
    `bucket_pivots` members, in exact-hash order (a function of the text, not of where the
    document sits), is paired with every later member: k * pivots pairs instead of k^2 / 2.
    A pair of two later members is not compared in this bucket; a pair at Jaccard >= 0.8
    shares 5 of 20 bands on average, so it is usually compared in another one. The count of
    such pairs is reported (`pairs_not_compared`).

Without verification (`verify_jaccard=False`) a bucket is one cluster, so a star of links
to its first member is enough. Which pairs are listed depends on keys only where it cannot
change a cluster (links between identical copies, stars of unverified buckets).

Outputs (see `layout`): the pairs of each verification partition, and per input shard the
rows that verification partitions need (the text, to compare) or only need described
(attributes, for rows linked without comparison).
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from pipeline.dataset import read_parquet
from pipeline.dedup import layout
from pipeline.dedup.config import DedupConfig, DedupError
from pipeline.dedup.shingles import fmix64
from pipeline.storage import ObjectStore, join

EXACT = "exact"
BUCKET_SCHEMA = pa.schema([("hash", pa.uint64()), ("order", pa.uint64()), ("key", pa.uint64())])
PAIRS_SCHEMA = pa.schema([("a", pa.uint64()), ("b", pa.uint64()), ("known", pa.bool_())])
WANTED_SCHEMA = pa.schema([("key", pa.uint64()), ("partition", pa.int64()), ("text", pa.bool_())])
PAIR_MIX = np.uint64(0x9E3779B97F4A7C15)


def pair_partition(a: np.ndarray, b: np.ndarray, partitions: int) -> np.ndarray:
    """The verification partition of pair (a, b): every band that finds the pair sends it to
    the same partition, which lists it once."""
    return (fmix64(a * PAIR_MIX + fmix64(b)) % np.uint64(partitions)).astype(np.int64)


def first_of_runs(*columns: np.ndarray) -> np.ndarray:
    """For rows sorted by `columns`: True where a row differs from the previous one."""
    n = len(columns[0])
    new = np.ones(n, bool)
    if n > 1:
        same = np.ones(n - 1, bool)
        for c in columns:
            same &= c[1:] == c[:-1]
        new[1:] = ~same
    return new


def ragged_arange(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + c) for each (s, c), without a Python loop."""
    total = int(counts.sum())
    if not total:
        return np.zeros(0, np.int64)
    offsets = np.cumsum(counts) - counts
    return np.repeat(starts - offsets, counts) + np.arange(total)


def bucket_pairs(table: pa.Table, *, exact: bool, verify: bool, pivots: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Pairs (a < b) and whether each is known without comparison, for one partition's rows."""
    hashes, order, keys = (table.column(c).to_numpy() for c in ("hash", "order", "key"))
    sort = np.lexsort([keys, order, hashes])
    hashes, order, keys = hashes[sort], order[sort], keys[sort]
    new_bucket = first_of_runs(hashes)
    new_copy = first_of_runs(hashes, order)
    # Identical copies: linked to the first of their run.
    copy_first = keys[np.flatnonzero(new_copy)][np.cumsum(new_copy) - 1]
    same = ~new_copy
    a_parts, b_parts, known_parts = [copy_first[same]], [keys[same]], [np.ones(int(same.sum()), bool)]
    rows_per_bucket = np.bincount(np.cumsum(new_bucket) - 1) if len(keys) else np.zeros(0, np.int64)
    stats = {"docs": int(len(keys)), "buckets_with_duplicates": int((rows_per_bucket > 1).sum())}
    distinct = np.flatnonzero(new_copy)
    bucket_of = (np.cumsum(new_bucket) - 1)[distinct]
    bucket_start = np.flatnonzero(first_of_runs(bucket_of)) if len(distinct) else np.zeros(0, np.int64)
    sizes = np.diff(np.append(bucket_start, len(distinct)))
    stats.update(largest_bucket=int(sizes.max()) if len(sizes) else 0, pairs_not_compared=0, buckets_over_pivots=0)
    if not exact and len(distinct):
        dkeys = keys[distinct]
        end = np.repeat(bucket_start + sizes, sizes)  # one past each distinct member's bucket
        rank = np.arange(len(distinct)) - np.repeat(bucket_start, sizes)
        heads = rank == 0 if not verify else rank < pivots
        partners = end - np.arange(len(distinct)) - 1
        if not verify:  # a bucket is one cluster: a star from its first member
            partners = np.where(heads, sizes.repeat(sizes) - 1, 0)
        pos = np.flatnonzero(heads & (partners > 0))
        a_parts.append(np.repeat(dkeys[pos], partners[pos]))
        b_parts.append(dkeys[ragged_arange(pos + 1, partners[pos])])
        known_parts.append(np.full(int(partners[pos].sum()), not verify))
        if verify:
            over = sizes > pivots + 1
            listed = pivots * sizes[over] - pivots * (pivots + 1) // 2
            stats.update(buckets_over_pivots=int(over.sum()), pairs_not_compared=int((sizes[over] * (sizes[over] - 1) // 2 - listed).sum()))
    a, b, known = np.concatenate(a_parts), np.concatenate(b_parts), np.concatenate(known_parts)
    return np.minimum(a, b), np.maximum(a, b), known, stats


def unique_pairs(a: np.ndarray, b: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row per (a, b); known if any listing of it was known."""
    order = np.lexsort([~known, b, a])
    a, b, known = a[order], b[order], known[order]
    first = first_of_runs(a, b)
    return a[first], b[first], known[first]


def candidates_stage(group: str, work_uri: str, config: DedupConfig, store: ObjectStore, plan: dict) -> dict:
    """The candidate partitions of one group (band hash ranges, exact-hash ranges) over all
    shards -> pairs by verification partition, and the rows each shard must provide."""
    if group not in plan["candidate_groups"]:
        raise DedupError(f"unknown candidate group {group!r}")
    if (found := layout.done(store, work_uri, "candidates", group)) is not None:
        return found
    started = time.process_time()
    shard_names = [layout.shard_name(i) for i in range(len(plan["shards"]))]
    layout.require_done(store, work_uri, "signatures", shard_names, DedupError)
    a_parts, b_parts, known_parts, per_partition = [], [], [], {}
    for partition in plan["candidate_groups"][group]:
        table = pa.concat_tables(
            [read_parquet(store, layout.bucket_uri(work_uri, partition, i)) for i in range(len(plan["shards"]))]
        )
        a, b, known, stats = bucket_pairs(table, exact=partition.startswith(EXACT), verify=config.verify_jaccard, pivots=config.bucket_pivots)
        del table
        a, b, known = unique_pairs(a, b, known)
        a_parts.append(a), b_parts.append(b), known_parts.append(known)
        per_partition[partition] = {**stats, "pairs": int(len(a))}
    a, b, known = unique_pairs(np.concatenate(a_parts), np.concatenate(b_parts), np.concatenate(known_parts))
    partitions = plan["partitions"]
    vp = pair_partition(a, b, partitions)
    writes = layout.Writes(store)
    writes.scatter(join(work_uri, "pairs"), vp, pa.table([a, b, known], schema=PAIRS_SCHEMA), group)
    # Each endpoint once per verification partition; the text only where a pair is compared.
    keys, parts, text = np.concatenate([a, b]), np.concatenate([vp, vp]), np.concatenate([~known, ~known])
    order = np.lexsort([~text, parts, keys])
    keys, parts, text = keys[order], parts[order], text[order]
    first = first_of_runs(keys, parts)
    keys, parts, text = keys[first], parts[first], text[first]
    writes.scatter(join(work_uri, "wanted"), layout.shard_of(keys), pa.table([keys, parts, text], schema=WANTED_SCHEMA), group, layout.shard_name)
    counts = {
        "group": group,
        "pairs": int(len(a)),
        "pairs_to_verify": int((~known).sum()),
        "partitions": per_partition,
        **writes.counts(),
        "cpu_seconds": round(time.process_time() - started, 3),
    }
    return layout.finish(store, work_uri, "candidates", group, counts)
