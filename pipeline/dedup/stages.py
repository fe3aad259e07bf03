"""The dedup stages: plain functions over one partition each, all state as Parquet/JSON under a
work folder on object storage (see `layout`), so a task can run any of them anywhere and a
crashed run resumes where it stopped.

    plan          once            shard list (shard index = position), rows, partition counts
    signatures    per shard       MinHash band hashes + exact hashes, bucketed by hash range
    candidates    per group       documents sharing a bucket -> candidate pairs (`candidates`)
    gather        per shard       texts to verification partitions, attributes to node partitions
    verify        per partition   exact Jaccard of the pairs -> edges of the duplicate graph (`verify`)
    components    per partition   large-star / small-star steps until a round changes nothing (`components`)
    attach        per partition   node -> cluster label, with its attributes (`representatives`)
    choose        per partition   the representative of each cluster by the quality rule; removals
    filter        per shard       the shard without its removed rows, committed as a unit
    audit         once            the removal table and a summary into the dataset version

Every stage writes its outputs first and a `_done` marker with its counts last; when the
marker is there a re-run returns the recorded counts (marked `skipped`) without redoing work.
Outputs are sorted and named deterministically, so redoing a stage gives the same bytes.
`run_stages` is the one driver: it takes a `map` that runs a stage over its items (a loop,
an executor, or Prefect tasks) and decides the number of component rounds.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.dataset import DatasetVersion, ShardWriter, read_parquet, read_parquet_batches, unit_name
from pipeline.dedup import layout
from pipeline.dedup.candidates import BUCKET_SCHEMA, EXACT, candidates_stage
from pipeline.dedup.components import MAX_STEPS, components_step, converged
from pipeline.dedup.config import DedupConfig, DedupError
from pipeline.dedup.minhash import band_hashes, signatures
from pipeline.dedup.representatives import DROP_SCHEMA, REMOVALS_SCHEMA, attach_stage, choose_stage
from pipeline.dedup.shingles import bounded_slices, normalize, shingle_hashes
from pipeline.dedup.verify import gather_stage, verify_stage
from pipeline.storage import ObjectStore, join

BATCH_ROWS = 1024  # documents shingled at once (and at most MAX_BATCH_TEXT_BYTES of text): bounds the stage's memory
CRAWL_COLUMN = "crawl_timestamp"


def candidate_partitions(config: DedupConfig, hash_ranges: int) -> list[str]:
    """Names of the candidate partitions: one per LSH band and hash range, plus the exact-hash ranges."""
    out = []
    if config.minhash:
        bands, _ = config.band_params
        out += [f"band-{b:03d}-{r:03d}" for b in range(bands) for r in range(hash_ranges)]
    if config.exact:
        out += [f"{EXACT}-{r:03d}" for r in range(hash_ranges)]
    return out


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


# -- plan ----------------------------------------------------------------------------------


def plan_dedup(shard_uris: list[str], work_uri: str, config: DedupConfig, store: ObjectStore | None = None) -> dict:
    """Fix the shard list, config and partition counts of a work folder (idempotent; a
    different plan for the same folder is an error, since keys and buckets depend on it).

    Partitions (unless the config fixes them): `ceil(documents / partition_docs)` graph
    partitions and `ceil(documents / bucket_docs)` hash ranges per band; the candidate
    partitions are grouped about two groups per graph partition (at least 4), one task each."""
    store = store or ObjectStore()
    if not shard_uris:
        raise DedupError("no input shards to deduplicate")
    if len(set(shard_uris)) != len(shard_uris):
        raise DedupError("the same input shard is listed twice")
    existing = layout.read_json(store, layout.plan_uri(work_uri))
    if existing is not None:
        if existing["shards"] != list(shard_uris) or existing["config"] != config.as_dict():
            raise DedupError(f"{work_uri} holds a dedup run over other shards or another config; use a new work folder")
        return existing
    rows = []
    for uri in shard_uris:
        with store.open_random_access(uri) as fh:
            meta = pq.ParquetFile(fh).metadata
        if meta.num_rows >= 1 << layout.ROW_BITS:
            raise DedupError(f"{uri} has {meta.num_rows} rows; at most 2^32 per shard")
        rows.append(meta.num_rows)
    partitions = config.partitions or max(1, math.ceil(sum(rows) / config.partition_docs))
    hash_ranges = config.hash_ranges or max(1, math.ceil(sum(rows) / config.bucket_docs))
    names = candidate_partitions(config, hash_ranges)
    n_groups = min(len(names), max(4, 2 * partitions))
    plan = {
        "shards": list(shard_uris),
        "rows": rows,
        "config": config.as_dict(),
        "bands_rows": list(config.band_params),
        "partitions": partitions,
        "hash_ranges": hash_ranges,
        "candidate_groups": {f"c{g:04d}": names[g::n_groups] for g in range(n_groups)},
    }
    layout.write_json(store, layout.plan_uri(work_uri), plan)
    return plan


# -- signatures ----------------------------------------------------------------------------


def _document_attributes(batch: pa.RecordBatch, config: DedupConfig) -> tuple[pa.Array, pa.Array]:
    """The quality score and crawl time (ms since the epoch) of each row, null where absent."""
    n = batch.num_rows
    names = batch.schema.names
    quality = pa.nulls(n, pa.float64())
    if config.quality_column and config.quality_column in names:
        quality = batch.column(config.quality_column).cast(pa.float64())
    crawl = pa.nulls(n, pa.int64())
    if CRAWL_COLUMN in names and pa.types.is_timestamp(batch.schema.field(CRAWL_COLUMN).type):
        # floored first: a safe cast of micro- or nanosecond times to ms refuses to lose data
        crawl = pc.floor_temporal(batch.column(CRAWL_COLUMN), unit="millisecond").cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64())
    return quality, crawl


def signatures_stage(shard_uri: str, work_uri: str, config: DedupConfig, store: ObjectStore | None = None) -> dict:
    """One input shard -> its documents' attributes and one bucket file per candidate partition."""
    store = store or ObjectStore()
    plan = _load_plan(store, work_uri, config)
    shard = _shard_index(plan, shard_uri)
    name = layout.shard_name(shard)
    if (found := layout.done(store, work_uri, "signatures", name)) is not None:
        return found
    started = time.process_time()
    with store.open_random_access(shard_uri) as fh:
        available = pq.ParquetFile(fh).schema_arrow.names
    missing = {"id", "text"} - set(available)
    if missing:
        raise DedupError(f"{shard_uri} is not a document shard: no column(s) {sorted(missing)}")
    columns = ["id", "text"] + [c for c in (config.quality_column, CRAWL_COLUMN) if c and c in available and c not in ("id", "text")]
    bands, rows = config.band_params
    docs_parts, band_parts, exact_parts = [], [], []
    row0, shingles = 0, 0
    batches = read_parquet_batches(store, shard_uri, columns=columns, batch_size=BATCH_ROWS)
    for batch in (b.slice(start, stop - start) for b in batches for start, stop in bounded_slices(b.column("text"), BATCH_ROWS)):
        n = batch.num_rows
        keys = (np.uint64(shard) << np.uint64(layout.ROW_BITS)) | np.arange(row0, row0 + n, dtype=np.uint64)
        row0 += n
        sh = shingle_hashes(normalize(batch.column("text")), config.ngram)
        shingles += len(sh.hashes)
        has_words = sh.words > 0  # documents without words are nobody's duplicate
        hi, lo = sh.exact_hashes()
        quality, crawl = _document_attributes(batch, config)
        docs_parts.append(pa.table([keys, batch.column("id").cast(pa.string()), hi, lo, sh.words, quality, crawl], schema=layout.DOCS_SCHEMA))
        if config.minhash:
            sig = signatures(sh, config.num_perm, config.seed, config.scheme)
            band_parts.append((band_hashes(sig[has_words], bands, rows), hi[has_words], keys[has_words]))
        if config.exact:
            exact_parts.append((hi[has_words], lo[has_words], keys[has_words]))
    docs = pa.concat_tables(docs_parts) if docs_parts else layout.DOCS_SCHEMA.empty_table()
    writes = layout.Writes(store)
    writes.table(layout.docs_uri(work_uri, shard), docs)
    # Every band and the exact hashes have the same number of ranges. (Reading it off the group
    # lists kept the range of whichever group came last, not the largest: with 7 ranges in 4+
    # groups some bucket files were never written, and the candidates stage failed at 100x.)
    ranges = plan["hash_ranges"]
    if config.minhash:
        bh = np.concatenate([p[0] for p in band_parts]) if band_parts else np.zeros((0, bands), np.uint64)
        order = np.concatenate([p[1] for p in band_parts]) if band_parts else np.zeros(0, np.uint64)
        keys = np.concatenate([p[2] for p in band_parts]) if band_parts else np.zeros(0, np.uint64)
        for band in range(bands):
            prefix = f"band-{band:03d}"
            _write_buckets(writes, work_uri, prefix, shard, ranges, bh[:, band], order, keys)
    if config.exact:
        cols = [np.concatenate([p[i] for p in exact_parts]) if exact_parts else np.zeros(0, np.uint64) for i in range(3)]
        _write_buckets(writes, work_uri, EXACT, shard, ranges, *cols)
    words = docs.column("words").to_numpy()
    counts = {"shard": shard_uri, "docs": row0, "docs_without_words": int((words == 0).sum()), "shingles": shingles, **writes.counts(),
              "cpu_seconds": round(time.process_time() - started, 3)}  # fmt: skip
    return layout.finish(store, work_uri, "signatures", name, counts)


def _write_buckets(writes: layout.Writes, work: str, prefix: str, shard: int, ranges: int, hashes: np.ndarray, order: np.ndarray, keys: np.ndarray) -> None:
    """Split (hash, order, key) rows by hash range and write each range sorted."""
    which = hashes % np.uint64(ranges)
    for r in range(ranges):
        sel = which == r
        cols = [hashes[sel], order[sel], keys[sel]]
        sort = np.lexsort(cols[::-1])
        writes.table(layout.bucket_uri(work, f"{prefix}-{r:03d}", shard), pa.table([c[sort] for c in cols], schema=BUCKET_SCHEMA))


# -- filter and audit ------------------------------------------------------------------------


def filter_stage(shard_uri: str, work_uri: str, out_version: DatasetVersion, config: DedupConfig, store: ObjectStore | None = None) -> dict:
    """Write one shard without its removed rows (all columns kept) as a unit of `out_version`.
    Idempotent through the version: a committed unit is not written again."""
    store = store or ObjectStore()
    plan = _load_plan(store, work_uri, config)
    shard = _shard_index(plan, shard_uri)
    unit = unit_name(shard_uri)
    committed = out_version.unit(unit)
    if committed is not None:
        return {**committed["counts"], "skipped": True}
    layout.require_done(store, work_uri, "choose", [layout.part_name(p) for p in range(plan["partitions"])], DedupError)
    started = time.process_time()
    drop = layout.gather(store, join(work_uri, "drop", layout.shard_name(shard)), DROP_SCHEMA)
    drop_rows = np.sort(drop.column("row").to_numpy().astype(np.int64))
    reasons = Counter(f"duplicate_{s}" for s in drop.column("stage").to_pylist())
    with store.open_random_access(shard_uri) as fh:
        schema = pq.ParquetFile(fh).schema_arrow
    if len(drop_rows) != len(np.unique(drop_rows)):
        raise DedupError(f"{work_uri}: shard {shard} has a row removed twice (a stale or mixed work folder)")
    row0 = kept = 0
    with ShardWriter(out_version, unit, schema=schema) as writer:
        for batch in read_parquet_batches(store, shard_uri):
            n = batch.num_rows
            keep = np.ones(n, bool)
            lo, hi = np.searchsorted(drop_rows, [row0, row0 + n])
            keep[drop_rows[lo:hi] - row0] = False
            kept += int(keep.sum())
            writer.write(batch.filter(pa.array(keep)))
            row0 += n
        # Row positions come from the signatures stage: a shard that changed since (or a
        # work folder of another plan) would drop the wrong rows, so the counts must agree.
        if row0 != plan["rows"][shard] or kept != row0 - len(drop_rows):
            raise DedupError(f"{shard_uri}: {row0} rows read, {plan['rows'][shard]} planned, {len(drop_rows)} to drop, {kept} kept: "
                             "the shard is not the one the dedup plan saw")  # fmt: skip
        counts = {"docs_in": row0, "kept": kept, "dropped": dict(sorted(reasons.items())), "cpu_seconds": round(time.process_time() - started, 3)}
        writer.commit(counts=counts, config_hash_=config.hash)
    return {**counts, "skipped": False}


def removal_table_uris(version: DatasetVersion) -> list[str]:
    """The parts of a version's dedup removal table (`<version>/dedup/removals/*.parquet`)."""
    return sorted(o.uri for o in version.store.list(join(version.uri, "dedup", "removals") + "/") if o.uri.endswith(".parquet"))


def read_removals(version: DatasetVersion) -> pa.Table:
    parts = [read_parquet(version.store, u) for u in removal_table_uris(version)]
    return pa.concat_tables(parts).sort_by([("id", "ascending")]) if parts else REMOVALS_SCHEMA.empty_table()


def audit_stage(work_uri: str, out_version: DatasetVersion, config: DedupConfig, store: ObjectStore | None = None) -> dict:
    """Keep the removal table with the dataset version (`<version>/dedup/removals/p*.parquet`)
    and a summary of every stage's counts (`<version>/dedup/summary.json`)."""
    store = store or ObjectStore()
    plan = _load_plan(store, work_uri, config)
    chosen = layout.finished(store, work_uri, "choose")
    if len(chosen) != plan["partitions"]:
        raise DedupError("the choose stage has not finished")
    for p in sorted(chosen):
        source = join(layout.removals_dir(work_uri), f"{p}.parquet")
        store.put_bytes(join(out_version.uri, "dedup", "removals", f"{p}.parquet"), store.get_bytes(source))
    by_stage: Counter = Counter()
    for c in chosen.values():
        by_stage.update(c["removed_by_stage"])
    summary = {
        "clusters": sum(c["clusters"] for c in chosen.values()),
        "docs_in_clusters": sum(c["docs_in_clusters"] for c in chosen.values()),
        "largest_cluster": max((c["largest_cluster"] for c in chosen.values()), default=0),
        "removed": sum(c["removed"] for c in chosen.values()),
        "removed_by_stage": dict(sorted(by_stage.items())),
    }
    layout.write_json(store, join(out_version.uri, "dedup", "summary.json"), {"config": config.as_dict(), "bands_rows": plan["bands_rows"], "partitions": plan["partitions"], **summary})
    return {"removals_uri": join(out_version.uri, "dedup", "removals"), **summary}


# -- one driver for every way of running the stages --------------------------------------------------


@dataclass(frozen=True)
class DedupJob:
    """One dedup run, bound to its work folder, config and output version: small and
    picklable, so orchestrators hand it to their workers; every method is one stage over one item."""

    work_uri: str
    config: DedupConfig
    dataset_uri: str
    version: str
    code: str = ""  # the output version's code fingerprint (DatasetVersion `code`)

    def output(self, store: ObjectStore | None = None) -> DatasetVersion:
        return DatasetVersion(self.dataset_uri, self.version, store, code=self.code)

    def _plan(self, store: ObjectStore) -> dict:
        return _load_plan(store, self.work_uri, self.config)

    def plan(self, shard_uris: list[str]) -> dict:
        return plan_dedup(shard_uris, self.work_uri, self.config)

    def signatures(self, shard_uri: str) -> dict:
        return signatures_stage(shard_uri, self.work_uri, self.config)

    def candidates(self, group: str) -> dict:
        store = ObjectStore()
        return candidates_stage(group, self.work_uri, self.config, store, self._plan(store))

    def gather(self, shard_uri: str) -> dict:
        store = ObjectStore()
        plan = self._plan(store)
        _shard_index(plan, shard_uri)
        return gather_stage(shard_uri, self.work_uri, self.config, store, plan)

    def verify(self, partition: int) -> dict:
        store = ObjectStore()
        return verify_stage(partition, self.work_uri, self.config, store, self._plan(store))

    def components(self, step_partition: tuple[int, int]) -> dict:
        store = ObjectStore()
        return components_step(*step_partition, self.work_uri, self.config, store, self._plan(store))

    def attach(self, step_partition: tuple[int, int]) -> dict:
        store = ObjectStore()
        return attach_stage(*step_partition, self.work_uri, self.config, store, self._plan(store))

    def choose(self, partition: int) -> dict:
        store = ObjectStore()
        return choose_stage(partition, self.work_uri, self.config, store, self._plan(store))

    def filter(self, shard_uri: str) -> dict:
        return filter_stage(shard_uri, self.work_uri, self.output(), self.config)

    def audit(self, _: object = None) -> dict:
        return audit_stage(self.work_uri, self.output(), self.config)


# map(stage name, items) -> one result per item, in order: how a caller runs a stage's partitions.
StageMap = Callable[[str, list], list]


def call_stage(job: DedupJob, stage: str, item: object) -> dict:
    return getattr(job, stage)(item)


def serial_map(job: DedupJob) -> StageMap:
    return lambda stage, items: [call_stage(job, stage, item) for item in items]


def executor_map(job: DedupJob, executor: Executor) -> StageMap:
    return lambda stage, items: list(executor.map(partial(call_stage, job, stage), items))


def stage_totals(counts: dict) -> dict:
    """Per stage: the number of partitions, how many were resumed, and the sum of every
    numeric count (the maximum of `largest_*` ones; what a report keeps: per-partition lists
    grow with the corpus)."""
    out: dict = {}
    for stage, value in counts.items():
        if not isinstance(value, list) or stage == "components":
            out[stage] = value
            continue
        total: Counter = Counter()
        for item in value:
            numbers = {k: v for k, v in item.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("partition", "step")}
            total.update({k: v for k, v in numbers.items() if not k.startswith("largest_")})
            for k in (k for k in numbers if k.startswith("largest_")):  # a maximum, not a sum
                total[k] = max(total.get(k, 0), numbers[k])
        out[stage] = {"partitions": len(value), "resumed": sum(1 for v in value if v.get("skipped")), **{k: round(v, 3) for k, v in sorted(total.items())}}
    return out


def run_stages(job: DedupJob, shard_uris: list[str], run: StageMap) -> dict:
    """Every stage in order through `run`; component steps until a round changes nothing."""
    plan = run("plan", [list(shard_uris)])[0]
    shards = plan["shards"]
    parts = list(range(plan["partitions"]))
    counts: dict = {"plan": {k: plan[k] for k in ("bands_rows", "partitions")} | {"candidate_groups": len(plan["candidate_groups"])}}
    counts["signatures"] = run("signatures", shards)
    counts["candidates"] = run("candidates", sorted(plan["candidate_groups"]))
    counts["gather"] = run("gather", shards)
    counts["verify"] = run("verify", parts)
    rounds, step = [], 0
    while True:
        large = run("components", [(step, p) for p in parts])
        small = run("components", [(step + 1, p) for p in parts])
        rounds.append({"edges": sum(r["edges_in"] for r in large), "changes": sum(r["changes"] for r in large + small)})
        step += 2
        if converged(large, small):
            break
        if step >= MAX_STEPS:
            raise DedupError(f"connected components did not converge in {MAX_STEPS} steps")
    counts["components"] = rounds
    counts["attach"] = run("attach", [(step, p) for p in parts])
    counts["choose"] = run("choose", parts)
    counts["filter"] = run("filter", shards)
    counts["audit"] = run("audit", [None])[0]
    return counts


def run_dedup(shard_uris: list[str], work_uri: str, out_version: DatasetVersion, config: DedupConfig, run: StageMap | None = None) -> dict:
    """Run every stage (in this process unless `run` says otherwise): the reference a
    distributed run must match. Returns the stage counts and the kept/dropped totals."""
    job = DedupJob(work_uri, config, out_version.dataset_uri, out_version.version)
    counts = run_stages(job, shard_uris, run or serial_map(job))
    filtered = counts["filter"]
    return {
        "docs_in": sum(f["docs_in"] for f in filtered),
        "kept": sum(f["kept"] for f in filtered),
        "dropped": dict(sorted(sum((Counter(f["dropped"]) for f in filtered), Counter()).items())),
        **counts,
    }
