"""Connected components of the duplicate graph, distributed: the alternating large-star /
small-star algorithm (Kiveris et al., "Connected Components in MapReduce and Beyond",
SoCC 2014) over edge files partitioned by node.

Step s reads `graph/s<s>/p<n>/*` (every edge (u, v) with u in node partition n, both
directions of each undirected edge) and writes step s+1's edges. Even steps are large-star,
odd steps small-star; Γ(u) is u's neighbourhood and m(u) = min(Γ(u) ∪ {u}):

  large-star: every neighbour v > u is linked to m(u)            (edge {v, m(u)})
  small-star: u and its neighbours v < u are linked to m of them (edge {v, m} for v ≠ m)

Both keep the components and never add edges on balance; they converge to one star per
component centred on its smallest node, in O(log^2 n) rounds (a handful in practice). A step
"changes" a node when its output around that node differs from the input: large-star at a
non-centre u with a neighbour above it, small-star at a u with two or more neighbours below
it. A round (large then small) with no change anywhere is the fixed point: every node is
then a centre or a leaf of exactly one centre, and a node's label is min(u, Γ(u)).

Each task holds one partition's edges; nodes are document keys (their order says nothing
about which copy is kept: that is `representatives`).
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from pipeline.dedup import layout
from pipeline.dedup.candidates import first_of_runs
from pipeline.dedup.config import DedupConfig, DedupError
from pipeline.dedup.verify import EDGES_SCHEMA
from pipeline.storage import ObjectStore, join

MAX_STEPS = 256


def step_name(step: int) -> str:
    return f"s{step:03d}"


def read_edges(store: ObjectStore, work: str, step: int, partition: int) -> tuple[np.ndarray, np.ndarray]:
    """Step `step`'s distinct directed edges out of one node partition, sorted by (u, v)."""
    table = layout.gather(store, join(work, "graph", step_name(step), layout.part_name(partition)), EDGES_SCHEMA)
    u, v = table.column("u").to_numpy(), table.column("v").to_numpy()
    order = np.lexsort([v, u])
    u, v = u[order], v[order]
    keep = first_of_runs(u, v)
    return u[keep], v[keep]


def star_step(u: np.ndarray, v: np.ndarray, large: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """One large- or small-star step over edges sorted by (u, v): the new undirected edges
    (as (low, high)) and the number of nodes whose neighbourhood changed."""
    if not len(u):
        return u, v, 0
    new_node = first_of_runs(u)
    group = np.cumsum(new_node) - 1
    smallest = v[new_node][group]  # sorted: the first neighbour is the smallest
    m = np.minimum(u, smallest)
    if large:
        above = v > u
        changed = np.bincount(group[above & (m < u)], minlength=group[-1] + 1) > 0
        x, y = v[above], m[above]
    else:
        below = v < u
        below_count = np.bincount(group[below], minlength=group[-1] + 1)
        changed = below_count >= 2
        heads = np.flatnonzero(new_node)
        with_below = heads[below_count > 0]
        x = np.concatenate([v[below], u[with_below]])  # u itself joins its smaller neighbours
        y = np.concatenate([m[below], m[with_below]])
        keep = x != y
        x, y = x[keep], y[keep]
    lo, hi = np.minimum(x, y), np.maximum(x, y)
    order = np.lexsort([hi, lo])
    lo, hi = lo[order], hi[order]
    first = first_of_runs(lo, hi)
    return lo[first], hi[first], int(changed.sum())


def components_step(step: int, partition: int, work_uri: str, config: DedupConfig, store: ObjectStore, plan: dict) -> dict:
    """One node partition through one step; writes step+1's edges by node partition."""
    if step >= MAX_STEPS:
        raise DedupError(f"connected components did not converge in {MAX_STEPS} steps")
    stage, name = f"components-{step_name(step)}", layout.part_name(partition)
    if (found := layout.done(store, work_uri, stage, name)) is not None:
        return found
    before = "verify" if step == 0 else f"components-{step_name(step - 1)}"
    layout.require_done(store, work_uri, before, [layout.part_name(p) for p in range(plan["partitions"])], DedupError)
    started = time.process_time()
    u, v = read_edges(store, work_uri, step, partition)
    lo, hi, changes = star_step(u, v, large=step % 2 == 0)
    edges = pa.table([np.concatenate([lo, hi]), np.concatenate([hi, lo])], schema=EDGES_SCHEMA)
    writes = layout.Writes(store)
    writes.scatter(join(work_uri, "graph", step_name(step + 1)), layout.node_partition(edges.column("u").to_numpy(), plan["partitions"]), edges, name)
    counts = {"step": step, "partition": partition, "edges_in": int(len(u)), "edges_out": int(len(lo)), "changes": changes,
              **writes.counts(), "cpu_seconds": round(time.process_time() - started, 3)}  # fmt: skip
    return layout.finish(store, work_uri, stage, name, counts)


def converged(results_large: list[dict], results_small: list[dict]) -> bool:
    """A large-star step and the small-star step after it changed nothing anywhere."""
    return sum(r["changes"] for r in results_large) + sum(r["changes"] for r in results_small) == 0


def labels(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At the fixed point: each node (sorted, distinct) and its component's smallest node."""
    if not len(u):
        return u, u
    new_node = first_of_runs(u)
    nodes = u[new_node]
    return nodes, np.minimum(nodes, v[new_node])
