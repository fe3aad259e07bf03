"""Large-star / small-star over node partitions against scipy's connected components."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.dedup.components import MAX_STEPS, labels, star_step
from pipeline.dedup.layout import node_partition


def _distributed_components(a: np.ndarray, b: np.ndarray, partitions: int) -> tuple[dict, int]:
    """The stage loop in memory: each step runs per node partition on that partition's
    directed edges, as `components_step` does; returns node -> label and the rounds taken."""
    u, v = np.concatenate([a, b]).astype(np.uint64), np.concatenate([b, a]).astype(np.uint64)
    for step in range(MAX_STEPS):
        part = node_partition(u, partitions)
        outs, changes = [], 0
        for p in range(partitions):
            pu, pv = u[part == p], v[part == p]
            order = np.lexsort([pv, pu])
            lo, hi, changed = star_step(pu[order], pv[order], large=step % 2 == 0)
            outs.append((lo, hi))
            changes += changed
        lo, hi = np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])
        pairs = np.unique(np.stack([lo, hi], 1), axis=0) if len(lo) else np.zeros((0, 2), np.uint64)
        u, v = np.concatenate([pairs[:, 0], pairs[:, 1]]), np.concatenate([pairs[:, 1], pairs[:, 0]])
        if step % 2 == 0:
            large_changes = changes
        elif large_changes + changes == 0:
            order = np.lexsort([v, u])
            nodes, label = labels(u[order], v[order])
            return dict(zip(nodes.tolist(), label.tolist())), (step + 1) // 2
    raise AssertionError("did not converge")


def _graphs():
    rng = np.random.default_rng(3)
    n = 400
    yield "random", rng.integers(0, n, 500), rng.integers(0, n, 500)
    path = rng.permutation(300)
    yield "long path", path[:-1], path[1:]
    yield "star", np.zeros(200, int) + 77, np.arange(200) + 1000
    clique = np.array([(i, j) for i in range(30) for j in range(i + 1, 30)])
    yield "clique and pairs", np.concatenate([clique[:, 0] * 11, np.arange(50) * 2 + 5000]), np.concatenate([clique[:, 1] * 11, np.arange(50) * 2 + 5001])


@pytest.mark.parametrize("partitions", [1, 4])
@pytest.mark.parametrize("name,a,b", list(_graphs()))
def test_star_steps_find_the_connected_components(name, a, b, partitions):
    keep = a != b
    a, b = a[keep], b[keep]
    got, rounds = _distributed_components(a, b, partitions)
    nodes = np.unique(np.concatenate([a, b]))
    ia, ib = np.searchsorted(nodes, a), np.searchsorted(nodes, b)
    _, component = connected_components(coo_matrix((np.ones(len(a)), (ia, ib)), shape=(len(nodes),) * 2), directed=False)
    smallest = {c: nodes[component == c].min() for c in np.unique(component)}
    assert got == {int(x): int(smallest[c]) for x, c in zip(nodes, component)}, name
    assert rounds <= 2 * int(np.log2(len(nodes))) ** 2


def test_an_edgeless_partition_changes_nothing():
    empty = np.zeros(0, np.uint64)
    assert star_step(empty, empty, large=True)[2] == 0 and star_step(empty, empty, large=False)[2] == 0
