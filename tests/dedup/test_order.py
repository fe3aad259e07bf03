"""The kept set does not depend on where documents sit: template-like families of variants
at mixed distances, deduplicated under several shard orders and shardings, give the same
clusters, and those clusters are exactly the components of "shares a bucket and has
Jaccard >= threshold" computed by brute force."""

from __future__ import annotations

import io
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.dataset import DatasetVersion
from pipeline.dedup import DedupConfig, band_hashes, normalize, read_removals, run_dedup, shingle_hashes, signatures
from pipeline.schema import documents_from_pylist
from pipeline.storage import join
from tests.dedup.corpus import edit_words, jaccard, web_docs

CONFIG = DedupConfig(num_perm=120, threshold=0.8, verify_jaccard=True, partitions=3)


@pytest.fixture(scope="module")
def families(shared) -> list[dict]:
    """Per page, 9 variants 0.5-6 % of words edited (pairwise Jaccard from ~0.6 to ~0.97:
    whether two variants are compared must not depend on which one heads a bucket), an exact
    copy, plus unrelated pages."""
    pages = web_docs(shared, 30, min_words=200)
    docs = []
    for p, page in enumerate(pages[:5]):
        docs.append({"id": f"f{p}-original", "text": page["text"]})
        docs.append({"id": f"f{p}-copy", "text": page["text"].upper()})
        for v, fraction in enumerate([0.005, 0.01, 0.015, 0.02, 0.03, 0.035, 0.04, 0.05, 0.06]):
            docs.append({"id": f"f{p}-v{v}", "text": edit_words(page["text"], fraction, seed=100 * p + v)})
    return docs + [{"id": d["id"], "text": d["text"]} for d in pages[5:]]


def _write(store, bucket: str, name: str, shards: list[list[dict]]) -> list[str]:
    uris = []
    for i, rows in enumerate(shards):
        sink = io.BytesIO()
        pq.write_table(documents_from_pylist([{**r, "source": "t"} for r in rows]), sink)
        uris.append(join(bucket, name, f"part-{i}.parquet"))
        store.put_bytes(uris[-1], sink.getvalue())
    return uris


def _clusters(store, bucket: str, name: str, shards: list[list[dict]], config: DedupConfig) -> tuple[set, list]:
    uris = _write(store, bucket, name, shards)
    version = DatasetVersion(join(bucket, "out", name), "v1", store)
    result = run_dedup(uris, join(bucket, "work", name), version, config)
    kept = set(version.read_table(columns=["id"]).column("id").to_pylist())
    removals = sorted(tuple(r[c] for c in ("id", "representative", "cluster_id", "stage")) for r in read_removals(version).to_pylist())
    assert result["kept"] == len(kept)
    return kept, removals, result


def _shardings(docs: list[dict]) -> dict[str, list[list[dict]]]:
    rng = random.Random(7)
    shuffled = docs[:]
    rng.shuffle(shuffled)
    return {
        "three": [docs[0::3], docs[1::3], docs[2::3]],
        "five-shuffled": [shuffled[i::5] for i in range(5)],
        "one-reversed": [docs[::-1]],
    }


@pytest.fixture(scope="module")
def outcomes(s3_settings, families) -> dict:
    """The families deduplicated under each sharding (one bucket for the module)."""
    from pipeline.storage import ObjectStore

    store = ObjectStore(s3_settings)
    name = f"order-{random.getrandbits(40):010x}"
    store.ensure_bucket(name)
    return {label: _clusters(store, f"s3://{name}", label, shards, CONFIG) for label, shards in _shardings(families).items()}


def test_kept_set_is_the_same_under_any_shard_order_and_sharding(outcomes):
    kept, removals, _ = outcomes["three"]
    assert len(removals) >= 25, "the families hold many duplicates"
    for name, (other_kept, other_removals, _) in outcomes.items():
        assert other_kept == kept, name
        assert other_removals == removals, name


def test_clusters_are_the_components_of_every_verified_bucket_pair(families, outcomes):
    """Brute force: all pairs sharing an LSH band with exact Jaccard >= threshold (or the same
    normalised text) -> connected components; each must be one cluster of the dedup output."""
    texts = [d["text"] for d in families]
    ids = [d["id"] for d in families]
    sh = shingle_hashes(normalize(pa.array(texts, pa.large_string())), CONFIG.ngram)
    bands = band_hashes(signatures(sh, CONFIG.num_perm, CONFIG.seed), *CONFIG.band_params)
    exact = list(zip(*sh.exact_hashes()))
    a, b = [], []
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            if exact[i] == exact[j] or (np.any(bands[i] == bands[j]) and jaccard(texts[i], texts[j]) >= CONFIG.threshold):
                a.append(i), b.append(j)
    n = len(texts)
    _, component = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    expected = {frozenset(ids[k] for k in np.flatnonzero(component == c)) for c in np.unique(component)}
    expected = {c for c in expected if len(c) > 1}

    _, removals, _ = outcomes["five-shuffled"]
    got: dict = {}
    for doc, rep, _, _ in removals:
        got.setdefault(rep, {rep}).add(doc)
    assert {frozenset(c) for c in got.values()} == expected


def test_huge_buckets_are_capped_yet_order_independent(store, bucket, families, outcomes):
    """With 2 pivots a bucket of k copies costs ~2k comparisons, not k^2/2; pairs not
    compared are counted, and the outcome still does not depend on the order."""
    config = DedupConfig(num_perm=120, threshold=0.8, verify_jaccard=True, partitions=2, bucket_pivots=2)
    capped = [_clusters(store, bucket, f"capped-{name}", shards, config) for name, shards in list(_shardings(families).items())[:2]]
    assert capped[0][:2] == capped[1][:2]
    partitions = [p for c in capped[0][2]["candidates"] for p in c["partitions"].values()]
    assert sum(p["buckets_over_pivots"] for p in partitions) > 0 and sum(p["pairs_not_compared"] for p in partitions) > 0
    uncapped = outcomes["three"][2]["candidates"]
    assert sum(c["pairs_to_verify"] for c in capped[0][2]["candidates"]) < sum(c["pairs_to_verify"] for c in uncapped)
