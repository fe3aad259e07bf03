"""Which copy of each cluster is kept, and the removal lists.

The representative is chosen by a fixed rule over what the documents say, never by where
they sit (shard order, row, key), so the kept set is the same under any sharding:

  1. most words (after normalisation): truncated copies and copies with dropped sentences lose;
  2. highest `quality_column` value, when the config names one and the column exists
     (missing values last);
  3. earliest `crawl_timestamp` (missing last): the first publication;
  4. smallest id.

Two stages, each over one partition: `attach_stage` (per node partition) labels each node
with its component and sends the node with its attributes to the label's partition;
`choose_stage` (per label partition) holds whole clusters, applies the rule and writes the
removal table and each shard's drop list. A task holds its partition's clusters: memory is
bounded by `partition_docs`, except that one very large cluster sits in one task (about 100
bytes per member).
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from pipeline.card import cluster_size_counts
from pipeline.dedup import layout
from pipeline.dedup.components import labels, read_edges, step_name
from pipeline.dedup.config import DedupConfig, DedupError
from pipeline.dedup.candidates import first_of_runs
from pipeline.storage import ObjectStore, join

EXACT, MINHASH = "exact", "minhash"
MEMBERS_SCHEMA = pa.schema([("label", pa.uint64()), *layout.DOCS_SCHEMA])
REMOVALS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("cluster_id", pa.int64()),  # stable: from the representative's id
        ("representative", pa.string()),
        ("stage", pa.string()),  # "exact": same normalised text as the representative; else "minhash"
        ("source", pa.string()),
        ("key", pa.uint64()),
    ]
)
DROP_SCHEMA = pa.schema([("row", pa.uint32()), ("stage", pa.string())])
RULE = [(column, order, "at_end") for column, order in [("label", "ascending"), ("words", "descending"), ("quality", "descending"),
                                                         ("crawl_ms", "ascending"), ("id", "ascending"), ("key", "ascending")]]


def attach_stage(final_step: int, partition: int, work_uri: str, config: DedupConfig, store: ObjectStore, plan: dict) -> dict:
    """One node partition at the components' fixed point: nodes with their label and attributes, to the label's partition."""
    name = layout.part_name(partition)
    if (found := layout.done(store, work_uri, "attach", name)) is not None:
        return found
    started = time.process_time()
    last_round = [layout.finished(store, work_uri, f"components-{step_name(s)}") for s in (final_step - 2, final_step - 1)]
    if final_step < 2 or any(len(r) != plan["partitions"] or any(c["changes"] for c in r.values()) for r in last_round):
        raise DedupError(f"connected components have not converged at step {final_step}")
    nodes, label = labels(*read_edges(store, work_uri, final_step, partition))
    attrs = layout.gather(store, join(work_uri, "attrs", name), layout.DOCS_SCHEMA)
    keys = attrs.column("key").to_numpy()
    order = np.argsort(keys, kind="stable")
    at = np.searchsorted(keys[order], nodes)
    found = at < len(keys)
    found[found] &= keys[order][at[found]] == nodes[found]
    if not found.all():
        raise DedupError(f"{work_uri}: {int((~found).sum())} graph node(s) of partition {partition} have no attributes (stale work folder?)")
    members = attrs.take(pa.array(order[at]))
    members = pa.table([pa.array(label, pa.uint64()), *members.columns], schema=MEMBERS_SCHEMA)
    writes = layout.Writes(store)
    writes.scatter(join(work_uri, "members"), layout.node_partition(label, plan["partitions"]), members, name)
    counts = {"partition": partition, "nodes": int(len(nodes)), **writes.counts(), "cpu_seconds": round(time.process_time() - started, 3)}
    return layout.finish(store, work_uri, "attach", name, counts)


def cluster_ids(representative_ids: pa.Array) -> np.ndarray:
    """A cluster's id: 63 bits of the xxh64 of its representative's id (stable across runs and shardings)."""
    return np.fromiter((xxhash.xxh64_intdigest(s.encode()) >> 1 for s in representative_ids.to_pylist()), dtype=np.int64, count=len(representative_ids))


def choose_stage(partition: int, work_uri: str, config: DedupConfig, store: ObjectStore, plan: dict) -> dict:
    """One label partition: the representative of each cluster by the rule; the others go to
    the removal table and to their shard's drop list."""
    name = layout.part_name(partition)
    if (found := layout.done(store, work_uri, "choose", name)) is not None:
        return found
    layout.require_done(store, work_uri, "attach", [layout.part_name(p) for p in range(plan["partitions"])], DedupError)
    started = time.process_time()
    members = layout.gather(store, join(work_uri, "members", name), MEMBERS_SCHEMA)
    members = members.take(pc.sort_indices(members, sort_keys=RULE))
    label = members.column("label").to_numpy()
    is_rep = first_of_runs(label)
    rep_row = np.flatnonzero(is_rep)[np.cumsum(is_rep) - 1]
    hi, lo = members.column("exact_hi").to_numpy(), members.column("exact_lo").to_numpy()
    exact = (hi == hi[rep_row]) & (lo == lo[rep_row])
    drop = np.flatnonzero(~is_rep)
    rep_ids = members.column("id").take(pa.array(rep_row[drop]))
    keys = members.column("key").to_numpy()[drop]
    stage = np.where(exact[drop], EXACT, MINHASH)
    sources = np.array(plan["shards"], dtype=object)[layout.shard_of(keys)]
    removals = pa.table(
        [members.column("id").take(pa.array(drop)), cluster_ids(rep_ids), rep_ids, pa.array(stage.tolist(), pa.string()), pa.array(sources.tolist(), pa.string()), keys],
        schema=REMOVALS_SCHEMA,
    ).sort_by([("key", "ascending")])
    writes = layout.Writes(store)
    writes.table(join(layout.removals_dir(work_uri), f"{name}.parquet"), removals)
    sorted_keys = removals.column("key").to_numpy()
    drops = pa.table([pa.array(layout.row_of(sorted_keys).astype(np.uint32)), removals.column("stage")], schema=DROP_SCHEMA)
    writes.scatter(join(work_uri, "drop"), layout.shard_of(sorted_keys), drops, name, layout.shard_name)
    sizes = np.diff(np.append(np.flatnonzero(is_rep), len(label)))
    counts = {
        "partition": partition,
        "clusters": int(is_rep.sum()),
        "docs_in_clusters": int(len(label)),
        "largest_cluster": int(sizes.max()) if len(sizes) else 0,
        **cluster_size_counts(sizes),  # the cluster-size histogram on the dataset card
        "removed": int(len(drop)),
        "removed_by_stage": dict(sorted(Counter(stage.tolist()).items())),
        **writes.counts(),
        "cpu_seconds": round(time.process_time() - started, 3),
    }
    return layout.finish(store, work_uri, "choose", name, counts)
