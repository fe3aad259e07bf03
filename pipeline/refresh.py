"""A corpus refresh as plain functions: per-source filtering, staged dedup, sealing.

`plan_refresh` fixes everything a refresh will do (inputs with their ETags, configs, the
code fingerprint and the hashes of every file the filters read, the compiled removal set,
the deterministic version id and where every stage writes); the stage functions take the
plan and one partition, so the Prefect flow maps them over workers and `run_refresh` calls
them in a plain loop. Both produce the same dataset version, byte for byte in content.

Object layout of a refresh of dataset D into version V::

    D/_stages/sources/versions/K/...   one source's filter output, K = hash of that source's
                                       ETag and size, the filter config, the code and the
                                       files the filters read: reused by every later refresh
                                       that has the same K (incremental refresh)
    D/_stages/filtered/versions/V/...  V's view of the filtered corpus: per source, the cached
                                       shards by reference, or a copy without removed documents
    D/_stages/dedup/V/...              dedup intermediates (signatures, pairs, clusters)
    D/versions/V/...                   the final shards, quarantine and manifest (sealed last)

After the seal, V's view and dedup intermediates are deleted, and source outputs that none
of the newest `keep_stage_versions` sealed versions used (`pipeline.gc`).
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable

import pyarrow.compute as pc

from pipeline import gc, lease
from pipeline.card import card_statistics
from pipeline.dataset import DatasetVersion, Manifest, ShardEntry, ShardWriter, config_hash, make_version_id, read_parquet, unit_name
from pipeline.dedup import DedupConfig, DedupJob, StageMap, executor_map, run_stages as run_dedup_stages, serial_map, stage_totals
from pipeline.fingerprint import check_code, code_fingerprint, referenced_files
from pipeline.process import EmptyOutputError, ReadOptions, process_source, totals
from pipeline.removals import RemovalFilter, RemovalRequest, RemovalSet, apply_removals, effective_requests, load_set, removal_version_id, set_digest
from pipeline.steps.chain import build_chain
from pipeline.storage import ObjectInfo, ObjectStore, join

CHARS_PER_TOKEN = 4.0  # rough English BPE ratio; the report says "estimated"

# MinHash at Jaccard 0.8 with exact-Jaccard verification of candidates (precision); the bands
# follow the threshold (20 x 6 at 0.8 with 120 permutations: recall), so a user threshold
# gets its own: F1 1.0 on bench/dedup.py's planted near-duplicates, where datasketch's
# optimal 9 x 13 without verification gives 0.905.
DEFAULT_DEDUP = {"num_perm": 120, "threshold": 0.8, "verify_jaccard": True, "exact": True}


@dataclass(frozen=True)
class RefreshPlan:
    dataset_uri: str
    sources: tuple[ObjectInfo, ...]
    filter_config: dict
    dedup_config: DedupConfig
    read: ReadOptions = ReadOptions()
    target_bytes: int = 128 << 20
    code: str = ""  # fingerprint.code_fingerprint() of the planner; every worker must match it
    files: dict = field(default_factory=dict)  # "<section>.<key>" -> sha256 of each file the filters read
    removal_set: str = ""  # URI of the compiled removal set (the requests themselves never travel)
    removal_digest: str = ""
    removal_names: tuple[str, ...] = ()
    version: str = ""  # set by plan_refresh from everything above

    @property
    def filtered(self) -> DatasetVersion:
        return DatasetVersion(join(self.dataset_uri, "_stages", "filtered"), self.version, code=self.code)

    @property
    def work_uri(self) -> str:
        return join(self.dataset_uri, "_stages", "dedup", self.version)

    @property
    def final(self) -> DatasetVersion:
        return DatasetVersion(self.dataset_uri, self.version, code=self.code)

    @property
    def filter_key_config(self) -> dict:
        """What shapes one source's filter output besides the source itself."""
        return {"filters": self.filter_config, "files": self.files, "read": self.read.__dict__, "target_bytes": self.target_bytes}

    @property
    def config(self) -> dict:
        return {**self.filter_key_config, "dedup": self.dedup_config.as_dict(), "removals": self.removal_digest}

    def source_key(self, source: ObjectInfo) -> str:
        return make_version_id([(source.uri, source.etag, source.size)], self.filter_key_config, self.code)

    def source_cache(self, source: ObjectInfo) -> DatasetVersion:
        return DatasetVersion(join(self.dataset_uri, "_stages", "sources"), self.source_key(source), code=self.code)

    def removals(self, store: ObjectStore | None = None) -> RemovalSet | None:
        if not self.removal_set:
            return None
        return load_set(self.removal_set, self.removal_digest, (store or ObjectStore()).settings)


def plan_refresh(
    sources: list[ObjectInfo], dataset_uri: str, filter_config: dict, dedup_config: DedupConfig, *, read: ReadOptions = ReadOptions(),
    target_bytes: int = 128 << 20, store: ObjectStore | None = None,
) -> RefreshPlan:  # fmt: skip
    """The version id covers input ETags and sizes, every config, the content of every file
    the filters read, the effective removal requests and the code: the same refresh re-run
    resumes the same version, and a change to any of them makes a new one."""
    store = store or ObjectStore()
    plan = RefreshPlan(dataset_uri, tuple(sources), filter_config, dedup_config, read, target_bytes, code_fingerprint(), referenced_files(filter_config))
    return with_removals(plan, effective_requests(dataset_uri, store), store)


def with_removals(plan: RefreshPlan, requests: list[RemovalRequest], store: ObjectStore) -> RefreshPlan:
    """The plan with this removal set compiled and stored, and the version id it gives."""
    removal_set = RemovalSet.from_requests(requests) if requests else None
    plan = replace(
        plan,
        removal_set=removal_set.save(plan.dataset_uri, requests, store) if removal_set else "",
        removal_digest=set_digest(requests) if requests else "",
        removal_names=tuple(r.name for r in requests),
    )
    return replace(plan, version=make_version_id([(s.uri, s.etag, s.size) for s in plan.sources], plan.config, plan.code))


def pending_removals(plan: RefreshPlan, store: ObjectStore | None = None) -> list[RemovalRequest] | None:
    """The effective requests when they differ from the plan's (filed or withdrawn since), else None."""
    requests = effective_requests(plan.dataset_uri, store)
    return requests if (set_digest(requests) if requests else "") != plan.removal_digest else None


def filter_source(plan: RefreshPlan, source: ObjectInfo) -> dict:
    """Stage 1, one per input object: the source's filter output (made now, or reused from an
    earlier refresh with the same inputs, filters, files and code), then the removal set
    applied to it, committed as a unit of this version's filtered view."""
    check_code(plan.code, f"refresh {plan.version}")
    unit = unit_name(source.uri)
    done = plan.filtered.unit(unit)
    if done is not None:
        return _result(done, unit, skipped=True)
    cache = plan.source_cache(source)
    cached = cache.unit(unit)
    reused = cached is not None
    if cached is None:
        process_source(source, cache, chain_factory=lambda: build_chain(plan.filter_config), read=plan.read, target_bytes=plan.target_bytes,
                       config_hash_=config_hash(plan.filter_key_config))  # fmt: skip
        cached = cache.unit(unit)
        assert cached is not None
    return _result(_apply_removal_set(plan, unit, cached, cache, reused), unit, skipped=False)


def _result(record: dict, unit: str, *, skipped: bool) -> dict:
    return {**record["counts"], "unit": unit, "skipped": skipped, "quarantine": record.get("quarantine", {})}


def _apply_removal_set(plan: RefreshPlan, unit: str, cached: dict, cache: DatasetVersion, reused: bool) -> dict:
    """Commit the source's output to the view: by reference when no removal request hits it
    (reading only the `id` and `url` columns to know), else a copy without those documents.
    A source output that held removed documents is then deleted: the next refresh filters
    that source again rather than keep a removed document in an intermediate."""
    counts = {**cached["counts"], "reused": reused, "source_key": cache.version}
    shards = [ShardEntry(**s) for s in cached["shards"]]
    removal_set = plan.removals(cache.store)
    hits = 0
    if removal_set is not None:
        hits = sum(pc.sum(pc.is_valid(removal_set.match(read_parquet(cache.store, s.uri, columns=["id", "url"])))).as_py() or 0 for s in shards)
    if not hits:
        return plan.filtered.commit_unit(unit, shards, counts=counts, quarantine=cached["quarantine"], config_hash_=config_hash(plan.config))
    step = RemovalFilter(removal_set)
    quarantine = cached["quarantine"]
    if quarantine.get("uri"):  # it lives with the source output, which goes below: the view keeps a copy
        kept = join(plan.filtered.uri, "quarantine", f"{unit}-{cache.version}.parquet")
        cache.store.copy(quarantine["uri"], kept)
        quarantine = {**quarantine, "uri": kept}
    with ShardWriter(plan.filtered, unit, schema=read_parquet(cache.store, shards[0].uri).schema, target_bytes=plan.target_bytes) as writer:
        for shard in shards:
            writer.write(step(read_parquet(cache.store, shard.uri)))
        counts.update(steps=[step.stats.as_dict(), *counts.get("steps", [])], documents_out=counts["documents_out"] - hits)
        record = writer.commit(counts=counts, quarantine=quarantine, config_hash_=config_hash(plan.config))
    gc.drop_source_output(cache)
    return record


def dedup_job(plan: RefreshPlan) -> DedupJob:
    """The dedup stages of this refresh: from the filtered view into the final version."""
    return DedupJob(plan.work_uri, plan.dedup_config, plan.dataset_uri, plan.version, plan.code)


def deduplicate(plan: RefreshPlan, filter_results: list[dict], run: StageMap | None = None) -> dict:
    """The dedup half of a refresh: every filtered shard (sorted) through the staged dedup
    (`pipeline.dedup.stages`), each stage's partitions run by `run` (a loop by default).
    Returns each stage's totals (the manifest keeps them). Filters that kept nothing of a
    non-empty input are an error that names what dropped it (re-running would repeat it)."""
    counted = totals(filter_results)
    if counted["read"] and not counted["kept"]:
        raise EmptyOutputError(
            f"{plan.final.uri}: the filters kept none of the {counted['read']} documents read "
            f"(dropped by rule: {counted['dropped']}, quarantined: {counted['quarantined']}); check the filter config"
        )
    job = dedup_job(plan)
    return stage_totals(run_dedup_stages(job, sorted(plan.filtered.shard_uris()), run or serial_map(job)))


def seal(plan: RefreshPlan, filter_results: list[dict], dedup_counts: dict) -> Manifest:
    """Seal the final version with its sources' quarantine records and a report of what every
    stage kept and dropped. Idempotent: on a sealed version it finishes an interrupted seal."""
    final = plan.final
    if final.is_sealed():
        return final.seal()
    for result in filter_results:
        _keep_quarantine(plan, result)
    manifest = final.manifest()
    report = summarize(plan, filter_results, dedup_counts, manifest)
    stages = {"sources": sorted({r["source_key"] for r in filter_results})}
    return final.seal(extra={"refresh": report, "stages": stages}, config_hash_=config_hash(plan.config))


def _keep_quarantine(plan: RefreshPlan, result: dict) -> None:
    """Copy a source's quarantine table into the final version (listed as a unit without
    shards), so it stays readable after the stages are collected."""
    info = result.get("quarantine") or {}
    unit = f"quarantine.{result['unit']}"
    if not info.get("uri") or plan.final.has_unit(unit):
        return
    target = join(plan.final.uri, "quarantine", f"{result['unit']}.parquet")
    plan.final.store.copy(info["uri"], target)
    plan.final.commit_unit(unit, [], counts={"source": result["source"]}, quarantine={**info, "uri": target})


def finish(plan: RefreshPlan, manifest: Manifest, *, keep_stage_versions: int = 1, store: ObjectStore | None = None) -> Manifest:
    """After the seal: apply removal requests filed while the refresh ran (a derived version
    without those documents becomes `latest`), then collect this refresh's intermediates.
    Returns the manifest of the version to announce."""
    store = store or plan.final.store
    late = pending_removals(plan, store)
    new_requests = [r for r in late or [] if r.name not in plan.removal_names]
    if new_requests:
        target = DatasetVersion(plan.dataset_uri, removal_version_id(manifest, new_requests), store)
        apply_removals(plan.final, target, new_requests)
        manifest = target.manifest()
    gc.collect_refresh_stages(plan.dataset_uri, plan.version, keep_stage_versions=keep_stage_versions, store=store)
    return manifest


def summarize(plan: RefreshPlan, filter_results: list[dict], dedup_counts: dict, manifest: Manifest) -> dict:
    counts = totals(filter_results)
    languages, text_bytes = language_mix(plan.final, manifest)
    return {
        "version": plan.version,
        "sources": len(plan.sources),
        "source_bytes": sum(s.size for s in plan.sources),
        "documents_read": counts["read"],
        "after_filters": counts["kept"],
        "documents": manifest.rows,
        "dedup_removed": counts["kept"] - manifest.rows,
        "dedup_rate": round((counts["kept"] - manifest.rows) / counts["kept"], 4) if counts["kept"] else 0.0,
        "dropped": counts["dropped"],
        "quarantined": counts["quarantined"],
        "text_bytes": text_bytes,
        "estimated_tokens": int(text_bytes / CHARS_PER_TOKEN),
        "languages": languages,
        "dedup": dedup_counts,
        "shards": len(manifest.shards),
        "bytes": manifest.bytes,
        "removal_requests": list(plan.removal_names),
        "sources_filtered": sum(1 for r in filter_results if not r.get("reused")),
        "sources_reused": sum(1 for r in filter_results if r.get("reused")),
        "sources_resumed": sum(1 for r in filter_results if r.get("skipped")),  # committed by an earlier attempt at this version
        "quarantine": sorted(plan.final.quarantine_uris(manifest)),
        "card": card_statistics(filter_results),  # per-source counts and histograms for the dataset card
    }


def language_mix(version: DatasetVersion, manifest: Manifest) -> tuple[dict[str, int], int]:
    """Documents per language and total text bytes, reading only the two columns needed."""
    counts: dict[str, int] = {}
    text_bytes = 0
    for shard in manifest.shards:
        table = read_parquet(version.store, shard["uri"], columns=["language", "text"])
        text_bytes += pc.sum(pc.binary_length(table.column("text"))).as_py() or 0
        for row in pc.value_counts(table.column("language").fill_null("unknown")).to_pylist():
            counts[row["values"]] = counts.get(row["values"], 0) + row["counts"]
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])), text_bytes


def settle(plan: RefreshPlan, run_stages: Callable[[RefreshPlan], tuple[list[dict], dict]], *, rounds: int = 3,
           before_seal: Callable[[], None] = lambda: None) -> tuple[RefreshPlan, Manifest, list[dict]]:  # fmt: skip
    """Run the stages and seal. Removal requests filed or withdrawn while the stages ran
    re-plan the version (filter outputs are reused; the removal pass and dedup run again), at
    most `rounds` times; requests filed later still are applied after the seal (`finish`).
    A plan whose version is sealed already only has an interrupted seal finished.
    Returns the plan sealed, its manifest and the per-source results of this run."""
    if plan.final.is_sealed():
        return plan, seal(plan, [], {}), []
    for round_ in range(rounds):
        filter_results, dedup_counts = run_stages(plan)
        late = pending_removals(plan, plan.final.store)
        if late is None or round_ == rounds - 1:
            break
        plan = with_removals(plan, late, plan.final.store)
    before_seal()
    return plan, seal(plan, filter_results, dedup_counts), filter_results


def run_stages(plan: RefreshPlan, executor: Executor | None = None) -> tuple[list[dict], dict]:
    """Every stage in order in this process (optionally on an executor with the flow's
    parallelism): per-source results and dedup counts."""
    run = (lambda fn, items: list(executor.map(fn, items))) if executor else (lambda fn, items: [fn(i) for i in items])
    filter_results = run(partial(filter_source, plan), list(plan.sources))
    dedup_counts = deduplicate(plan, filter_results, executor_map(dedup_job(plan), executor) if executor else None)
    return filter_results, dedup_counts


def run_refresh(plan: RefreshPlan, executor: Executor | None = None, *, keep_stage_versions: int = 1) -> Manifest:
    """The refresh without an orchestrator, under the dataset's lease: the same stage
    functions as the flow, then seal and finish. Tests and benchmarks compare the flow
    against this."""
    with lease.holding(plan.dataset_uri, store=plan.final.store) as held:
        plan, manifest, _ = settle(plan, partial(run_stages, executor=executor), before_seal=held.check)
        return finish(plan, manifest, keep_stage_versions=keep_stage_versions)
