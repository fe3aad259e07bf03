"""The dedup stages: plain functions over one partition each, all state as Parquet/JSON under a
work folder on object storage (see `layout`), so a Prefect task can run any of them anywhere
and a crashed run resumes where it stopped.

    plan_dedup        once         fixes the shard list (shard index = position) and config
    signatures_stage  per shard    MinHash band hashes + exact hashes, bucketed by partition
    candidates_stage  per partition  documents sharing a bucket -> candidate pairs
    clusters_stage    once         (optional exact-Jaccard check) + connected components,
                                   representative = smallest doc id, removal table
    filter_stage      per shard    writes the shard without the removed rows, commits a unit
    audit_stage       once         copies the removal table into the dataset version

Every stage writes its outputs first and a `_done` marker with its counts last; when the
marker is there a re-run returns the recorded counts (marked `skipped`) without redoing work.
Outputs are sorted and named deterministically, so redoing a stage gives the same bytes.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.dataset import DatasetVersion, ShardWriter, read_parquet, read_parquet_batches, unit_name
from pipeline.dedup import layout
from pipeline.dedup.config import DedupConfig, DedupError
from pipeline.dedup.minhash import band_hashes, signatures
from pipeline.dedup.shingles import normalize, shingle_hashes
from pipeline.storage import ObjectStore, join

BATCH_ROWS = 4096
EXACT = "exact"
MINHASH = "minhash"

BUCKET_SCHEMA = pa.schema([("hash", pa.uint64()), ("key", pa.uint64())])
EXACT_BUCKET_SCHEMA = pa.schema([("hash", pa.uint64()), ("hash_lo", pa.uint64()), ("key", pa.uint64())])
PAIRS_SCHEMA = pa.schema([("a", pa.uint64()), ("b", pa.uint64())])
DOCS_SCHEMA = pa.schema([("key", pa.uint64()), ("id", pa.string()), ("exact_hi", pa.uint64()), ("exact_lo", pa.uint64()), ("words", pa.int64())])
DROP_SCHEMA = pa.schema([("row", pa.uint32()), ("stage", pa.string())])
REMOVALS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("cluster_id", pa.int64()),
        ("representative", pa.string()),
        ("stage", pa.string()),  # "exact": same normalised text as the representative; else "minhash"
        ("source", pa.string()),
        ("key", pa.uint64()),
    ]
)


def candidate_partitions(config: DedupConfig) -> list[str]:
    """Names of the candidate partitions: one per LSH band and hash range, plus the exact-hash ranges."""
    out = []
    if config.minhash:
        bands, _ = config.band_params
        out += [f"band-{b:03d}-{r:03d}" for b in range(bands) for r in range(config.hash_ranges)]
    if config.exact:
        out += [f"{EXACT}-{r:03d}" for r in range(config.hash_ranges)]
    return out


def _store(store: ObjectStore | None) -> ObjectStore:
    return store or ObjectStore()


def _done(store: ObjectStore, work: str, stage: str, name: str) -> dict | None:
    counts = layout.read_json(store, layout.done_uri(work, stage, name))
    return {**counts, "skipped": True} if counts is not None else None


def _finish(store: ObjectStore, work: str, stage: str, name: str, counts: dict) -> dict:
    layout.write_json(store, layout.done_uri(work, stage, name), counts)
    return {**counts, "skipped": False}


# -- plan ----------------------------------------------------------------------------------


def plan_dedup(shard_uris: list[str], work_uri: str, config: DedupConfig, store: ObjectStore | None = None) -> dict:
    """Fix the shard list and config of a work folder (idempotent; a different plan for the
    same folder is an error, since keys and buckets depend on it). Returns the plan with the
    candidate partitions to map `candidates_stage` over."""
    store = _store(store)
    if not shard_uris:
        raise DedupError("no input shards to deduplicate")
    if len(set(shard_uris)) != len(shard_uris):
        raise DedupError("the same input shard is listed twice")
    plan = {"shards": list(shard_uris), "config": config.as_dict(), "partitions": candidate_partitions(config), "bands_rows": list(config.band_params)}
    existing = layout.read_json(store, layout.plan_uri(work_uri))
    if existing is not None:
        if existing["shards"] != plan["shards"] or existing["config"] != plan["config"]:
            raise DedupError(f"{work_uri} holds a dedup run over other shards or another config; use a new work folder")
        return existing
    layout.write_json(store, layout.plan_uri(work_uri), plan)
    return plan


def _load_plan(store: ObjectStore, work: str, config: DedupConfig) -> dict:
    plan = layout.read_json(store, layout.plan_uri(work))
    if plan is None:
        raise DedupError(f"{work} has no plan.json: run plan_dedup first")
    if plan["config"] != config.as_dict():
        raise DedupError(f"{work} was planned with another dedup config")
    return plan


def _shard_index(plan: dict, shard_uri: str) -> int:
    try:
        return plan["shards"].index(shard_uri)
    except ValueError:
        raise DedupError(f"{shard_uri} is not one of the planned shards") from None


# -- (a) signatures --------------------------------------------------------------------------


def signatures_stage(shard_uri: str, work_uri: str, config: DedupConfig, store: ObjectStore | None = None) -> dict:
    """One input shard -> its documents' keys/ids/exact hashes and one bucket file per partition."""
    store = _store(store)
    plan = _load_plan(store, work_uri, config)
    shard = _shard_index(plan, shard_uri)
    name = layout.shard_name(shard)
    if (done := _done(store, work_uri, "signatures", name)) is not None:
        return done
    started = time.process_time()
    with store.open_random_access(shard_uri) as fh:
        missing = {"id", "text"} - set(pq.ParquetFile(fh).schema_arrow.names)
    if missing:
        raise DedupError(f"{shard_uri} is not a document shard: no column(s) {sorted(missing)}")
    bands, rows = config.band_params
    docs_parts, band_parts, exact_parts = [], [], []
    row0, shingles = 0, 0
    for batch in read_parquet_batches(store, shard_uri, columns=["id", "text"], batch_size=BATCH_ROWS):
        n = batch.num_rows
        keys = (np.uint64(shard) << np.uint64(layout.ROW_BITS)) | np.arange(row0, row0 + n, dtype=np.uint64)
        row0 += n
        sh = shingle_hashes(normalize(batch.column("text")), config.ngram)
        shingles += len(sh.hashes)
        has_words = sh.words > 0  # documents without words are nobody's duplicate
        hi, lo = sh.exact_hashes() if config.exact else (np.zeros(n, np.uint64), np.zeros(n, np.uint64))
        docs_parts.append(pa.table([keys, batch.column("id").cast(pa.string()), hi, lo, sh.words], schema=DOCS_SCHEMA))
        if config.minhash:
            sig = signatures(sh, config.num_perm, config.seed, config.scheme)
            band_parts.append((band_hashes(sig[has_words], bands, rows), keys[has_words]))
        if config.exact:
            exact_parts.append((hi[has_words], lo[has_words], keys[has_words]))
    if row0 >= 1 << layout.ROW_BITS:
        raise DedupError(f"{shard_uri} has {row0} rows; at most 2^32 per shard")
    docs = pa.concat_tables(docs_parts) if docs_parts else DOCS_SCHEMA.empty_table()
    layout.write_table(store, layout.docs_uri(work_uri, shard), docs)
    if config.minhash:
        bh = np.concatenate([p[0] for p in band_parts]) if band_parts else np.zeros((0, bands), np.uint64)
        keys = np.concatenate([p[1] for p in band_parts]) if band_parts else np.zeros(0, np.uint64)
        for band in range(bands):
            _write_buckets(store, work_uri, f"band-{band:03d}", shard, config.hash_ranges, [bh[:, band]], keys)
    if config.exact:
        cols = [np.concatenate([p[i] for p in exact_parts]) if exact_parts else np.zeros(0, np.uint64) for i in range(3)]
        _write_buckets(store, work_uri, EXACT, shard, config.hash_ranges, cols[:2], cols[2])
    words = docs.column("words").to_numpy()
    counts = {"shard": shard_uri, "docs": row0, "docs_without_words": int((words == 0).sum()), "shingles": shingles, "cpu_seconds": round(time.process_time() - started, 3)}
    return _finish(store, work_uri, "signatures", name, counts)


def _write_buckets(store: ObjectStore, work: str, prefix: str, shard: int, ranges: int, hashes: list[np.ndarray], keys: np.ndarray) -> None:
    """Split (hash columns, key) rows by hash range and write them sorted by (hash, key)."""
    schema = EXACT_BUCKET_SCHEMA if len(hashes) == 2 else BUCKET_SCHEMA
    which = hashes[0] % np.uint64(ranges)
    for r in range(ranges):
        sel = which == r
        cols = [h[sel] for h in hashes] + [keys[sel]]
        order = np.lexsort(cols[::-1])
        table = pa.table([c[order] for c in cols], schema=schema)
        layout.write_table(store, layout.bucket_uri(work, f"{prefix}-{r:03d}", shard), table)


# -- (b) candidates --------------------------------------------------------------------------


def candidates_stage(partition: str, work_uri: str, config: DedupConfig, store: ObjectStore | None = None) -> dict:
    """One partition (a band's hash range, or an exact-hash range) over all shards -> pairs of
    documents that share a bucket: each member paired with the bucket's smallest key."""
    store = _store(store)
    plan = _load_plan(store, work_uri, config)
    if partition not in plan["partitions"]:
        raise DedupError(f"unknown candidate partition {partition!r}")
    if (done := _done(store, work_uri, "candidates", partition)) is not None:
        return done
    started = time.process_time()
    missing = [u for i, u in enumerate(plan["shards"]) if store.head(layout.bucket_uri(work_uri, partition, i)) is None]
    if missing:
        raise DedupError(f"signatures stage has not finished for {len(missing)} shard(s), e.g. {missing[0]}")
    tables = [read_parquet(store, layout.bucket_uri(work_uri, partition, i)) for i in range(len(plan["shards"]))]
    table = pa.concat_tables(tables)
    hash_cols = [table.column(c).to_numpy() for c in table.column_names if c != "key"]
    keys = table.column("key").to_numpy()
    order = np.lexsort([keys] + hash_cols[::-1])  # by hash(es), then key
    keys = keys[order]
    hash_cols = [h[order] for h in hash_cols]
    new_bucket = np.ones(len(keys), bool)
    if len(keys):
        same = np.ones(len(keys) - 1, bool)
        for h in hash_cols:
            same &= h[1:] == h[:-1]
        new_bucket[1:] = ~same
    bucket_start = np.flatnonzero(new_bucket)
    first_key = keys[bucket_start][np.cumsum(new_bucket) - 1]  # each row's bucket minimum
    members = ~new_bucket
    a, b = first_key[members], keys[members]
    pair_order = np.lexsort([b, a])
    pairs = pa.table([a[pair_order], b[pair_order]], schema=PAIRS_SCHEMA)
    layout.write_table(store, layout.pairs_uri(work_uri, partition), pairs)
    sizes = np.diff(np.append(bucket_start, len(keys)))
    counts = {
        "partition": partition,
        "docs": int(len(keys)),
        "buckets_with_duplicates": int((sizes > 1).sum()),
        "pairs": int(len(a)),
        "cpu_seconds": round(time.process_time() - started, 3),
    }
    return _finish(store, work_uri, "candidates", partition, counts)


# -- (c) clusters ----------------------------------------------------------------------------


def clusters_stage(work_uri: str, config: DedupConfig, store: ObjectStore | None = None) -> dict:
    """All candidate pairs -> connected components (union-find); in each, the document with
    the smallest id stays and the others go to the removal table. Memory is proportional to
    the documents that have a candidate duplicate, never to the corpus."""
    store = _store(store)
    plan = _load_plan(store, work_uri, config)
    if (done := _done(store, work_uri, "clusters", "all")) is not None:
        return done
    started = time.process_time()
    unfinished = [p for p in plan["partitions"] if store.head(layout.done_uri(work_uri, "candidates", p)) is None]
    if unfinished:
        raise DedupError(f"candidates stage has not finished for {len(unfinished)} partition(s), e.g. {unfinished[0]}")
    a_parts, b_parts, exact_parts = [], [], []
    for partition in plan["partitions"]:
        pairs = read_parquet(store, layout.pairs_uri(work_uri, partition))
        a_parts.append(pairs.column("a").to_numpy())
        b_parts.append(pairs.column("b").to_numpy())
        exact_parts.append(np.full(pairs.num_rows, partition.startswith(EXACT)))
    a, b, is_exact = np.concatenate(a_parts), np.concatenate(b_parts), np.concatenate(exact_parts)
    # One row per distinct pair; a pair found by an exact partition counts as exact.
    order = np.lexsort([~is_exact, b, a])
    a, b, is_exact = a[order], b[order], is_exact[order]
    first = np.ones(len(a), bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    a, b, is_exact = a[first], b[first], is_exact[first]
    counts: dict = {"candidate_pairs": int(len(a))}
    if config.verify_jaccard and config.minhash:
        check = ~is_exact
        jaccard = _pair_jaccard(store, plan, a[check], b[check], config)
        ok = np.ones(len(a), bool)
        ok[check] = jaccard >= config.threshold
        counts.update(pairs_verified=int(check.sum()), pairs_rejected=int((~ok).sum()))
        a, b = a[ok], b[ok]
    nodes = np.unique(np.concatenate([a, b]))
    ia, ib = np.searchsorted(nodes, a), np.searchsorted(nodes, b)
    graph = coo_matrix((np.ones(len(a), np.int8), (ia, ib)), shape=(len(nodes), len(nodes)))
    _, component = connected_components(graph, directed=False)
    removals = _removals(store, work_uri, plan, nodes, component, config)
    layout.write_table(store, layout.removals_uri(work_uri), removals)
    shard_of = (removals.column("key").to_numpy() >> np.uint64(layout.ROW_BITS)).astype(np.int64)
    rows = (removals.column("key").to_numpy() & np.uint64(layout.ROW_MASK)).astype(np.uint32)
    stages = removals.column("stage")
    bounds = np.searchsorted(shard_of, np.arange(len(plan["shards"]) + 1))  # removals are sorted by key
    for shard in range(len(plan["shards"])):
        lo, hi = bounds[shard], bounds[shard + 1]
        layout.write_table(store, layout.drop_uri(work_uri, shard), pa.table([rows[lo:hi], stages.slice(lo, hi - lo)], schema=DROP_SCHEMA))
    by_stage = Counter(stages.to_pylist())
    counts.update(
        pairs_kept=int(len(a)),
        docs_in_clusters=int(len(nodes)),
        clusters=int(component.max() + 1) if len(nodes) else 0,
        removed=removals.num_rows,
        removed_by_stage=dict(sorted(by_stage.items())),
        cpu_seconds=round(time.process_time() - started, 3),
    )
    return _finish(store, work_uri, "clusters", "all", counts)


def _removals(store: ObjectStore, work: str, plan: dict, nodes: np.ndarray, component: np.ndarray, config: DedupConfig) -> pa.Table:
    """The removal table: every clustered document but each cluster's smallest id, sorted by key."""
    if not len(nodes):
        return REMOVALS_SCHEMA.empty_table()
    info = _docs_info(store, work, nodes)
    table = pa.table({"component": component, "id": info.column("id"), "key": nodes, "hi": info.column("exact_hi"), "lo": info.column("exact_lo")})
    table = table.sort_by([("component", "ascending"), ("id", "ascending"), ("key", "ascending")])
    comp = table.column("component").to_numpy()
    is_rep = np.ones(len(comp), bool)
    is_rep[1:] = comp[1:] != comp[:-1]
    rep_row = np.flatnonzero(is_rep)[np.cumsum(is_rep) - 1]
    rep_ids = table.column("id").take(pa.array(np.flatnonzero(is_rep)))
    # Cluster ids numbered in the order of their representatives' ids: stable across re-runs.
    cluster_rank = np.empty(len(rep_ids), np.int64)
    cluster_rank[pc.sort_indices(rep_ids).to_numpy()] = np.arange(len(rep_ids))
    cluster_of_row = cluster_rank[np.cumsum(is_rep) - 1]
    hi, lo = table.column("hi").to_numpy(), table.column("lo").to_numpy()
    exact = (hi == hi[rep_row]) & (lo == lo[rep_row]) if config.exact else np.zeros(len(hi), bool)
    drop = ~is_rep
    keys = table.column("key").to_numpy()[drop]
    sources = np.array(plan["shards"], dtype=object)[(keys >> np.uint64(layout.ROW_BITS)).astype(np.int64)]
    out = pa.table(
        [
            table.column("id").filter(pa.array(drop)),
            cluster_of_row[drop],
            table.column("id").take(pa.array(rep_row[drop])),
            pa.array(np.where(exact[drop], EXACT, MINHASH).tolist(), pa.string()),
            pa.array(sources.tolist(), pa.string()),
            keys,
        ],
        schema=REMOVALS_SCHEMA,
    )
    return out.sort_by([("key", "ascending")])


def _docs_info(store: ObjectStore, work: str, keys: np.ndarray) -> pa.Table:
    """id and exact hash of the given (sorted, distinct) keys, read shard by shard."""
    shards = (keys >> np.uint64(layout.ROW_BITS)).astype(np.int64)
    parts = []
    for shard in np.unique(shards):
        docs = read_parquet(store, layout.docs_uri(work, int(shard)))
        wanted = keys[shards == shard]
        rows = (wanted & np.uint64(layout.ROW_MASK)).astype(np.int64)
        parts.append(docs.take(pa.array(rows)))
    info = pa.concat_tables(parts)
    if not np.array_equal(info.column("key").to_numpy(), keys):
        raise DedupError(f"{work}: docs files do not match the candidate keys (stale work folder?)")
    return info


def _pair_jaccard(store: ObjectStore, plan: dict, a: np.ndarray, b: np.ndarray, config: DedupConfig) -> np.ndarray:
    """Exact Jaccard similarity of the shingle sets (64-bit shingle hashes) of each pair,
    recomputed from the texts of the paired documents only."""
    nodes = np.unique(np.concatenate([a, b]))
    sets: dict[int, np.ndarray] = {}
    shards = (nodes >> np.uint64(layout.ROW_BITS)).astype(np.int64)
    for shard in np.unique(shards):
        wanted = nodes[shards == shard]
        rows = (wanted & np.uint64(layout.ROW_MASK)).astype(np.int64)
        texts = read_parquet(store, plan["shards"][int(shard)], columns=["text"]).column("text").take(pa.array(rows))
        sh = shingle_hashes(normalize(texts), config.ngram)
        for i, key in enumerate(wanted.tolist()):
            sets[key] = np.unique(sh.of(i))
    out = np.empty(len(a), np.float64)
    for i, (x, y) in enumerate(zip(a.tolist(), b.tolist())):
        sx, sy = sets[x], sets[y]
        inter = len(np.intersect1d(sx, sy, assume_unique=True))
        union = len(sx) + len(sy) - inter
        out[i] = inter / union if union else 0.0
    return out


# -- (d) filter and audit ----------------------------------------------------------------------


def filter_stage(shard_uri: str, work_uri: str, out_version: DatasetVersion, config: DedupConfig, store: ObjectStore | None = None) -> dict:
    """Write one shard without its removed rows (all columns kept) as a unit of `out_version`.
    Idempotent through the manifest: a committed unit is not written again."""
    store = _store(store)
    plan = _load_plan(store, work_uri, config)
    shard = _shard_index(plan, shard_uri)
    unit = unit_name(shard_uri)
    manifest = out_version.manifest()
    if unit in manifest.units:
        return {**manifest.units[unit]["counts"], "skipped": True}
    if store.head(layout.done_uri(work_uri, "clusters", "all")) is None:
        raise DedupError("clusters stage has not finished")
    started = time.process_time()
    drop = read_parquet(store, layout.drop_uri(work_uri, shard))
    drop_rows = drop.column("row").to_numpy().astype(np.int64)
    reasons = Counter(f"duplicate_{s}" for s in drop.column("stage").to_pylist())
    with store.open_random_access(shard_uri) as fh:
        schema = pq.ParquetFile(fh).schema_arrow
    row0, docs_in = 0, 0
    with ShardWriter(out_version, unit, schema=schema) as writer:
        for batch in read_parquet_batches(store, shard_uri):
            n = batch.num_rows
            keep = np.ones(n, bool)
            local = drop_rows[(drop_rows >= row0) & (drop_rows < row0 + n)] - row0
            keep[local] = False
            writer.write(batch.filter(pa.array(keep)))
            row0 += n
        docs_in = row0
        dropped = int(sum(reasons.values()))
        counts = {
            "docs_in": docs_in,
            "kept": docs_in - dropped,
            "dropped": dict(sorted(reasons.items())),
            "cpu_seconds": round(time.process_time() - started, 3),
        }
        writer.commit(counts=counts, config_hash_=config.hash)
    return {**counts, "skipped": False}


def audit_stage(work_uri: str, out_version: DatasetVersion, config: DedupConfig, store: ObjectStore | None = None) -> dict:
    """Keep the removal table with the dataset version: `<version>/dedup/removals.parquet`."""
    store = _store(store)
    _load_plan(store, work_uri, config)
    if store.head(layout.removals_uri(work_uri)) is None:
        raise DedupError("clusters stage has not finished")
    target = join(out_version.uri, "dedup", "removals.parquet")
    store.put_bytes(target, store.get_bytes(layout.removals_uri(work_uri)))
    clusters = layout.read_json(store, layout.done_uri(work_uri, "clusters", "all")) or {}
    layout.write_json(store, join(out_version.uri, "dedup", "summary.json"), {"config": config.as_dict(), "clusters": clusters})
    return {"removals_uri": target, "removed": clusters.get("removed", 0)}


# -- reference driver --------------------------------------------------------------------------


def run_dedup(shard_uris: list[str], work_uri: str, out_version: DatasetVersion, config: DedupConfig, store: ObjectStore | None = None) -> dict:
    """Run every stage in order in this process: the reference a distributed flow must match."""
    store = _store(store)
    plan = plan_dedup(shard_uris, work_uri, config, store)
    signatures = [signatures_stage(uri, work_uri, config, store) for uri in shard_uris]
    candidates = [candidates_stage(p, work_uri, config, store) for p in plan["partitions"]]
    clusters = clusters_stage(work_uri, config, store)
    filtered = [filter_stage(uri, work_uri, out_version, config, store) for uri in shard_uris]
    audit = audit_stage(work_uri, out_version, config, store)
    return {
        "docs_in": sum(f["docs_in"] for f in filtered),
        "kept": sum(f["kept"] for f in filtered),
        "dropped": dict(sorted(sum((Counter(f["dropped"]) for f in filtered), Counter()).items())),
        "signatures": signatures,
        "candidates": candidates,
        "clusters": clusters,
        "filter": filtered,
        "audit": audit,
    }
