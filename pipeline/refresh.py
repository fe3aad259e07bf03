"""A corpus refresh as plain functions: per-source filtering, staged dedup, sealing.

`plan_refresh` fixes everything a refresh will do (inputs with their ETags, configs, the
deterministic version id and where every stage writes); the stage functions take the plan
and one partition, so the Prefect flow maps them over workers and `run_refresh` calls them
in a plain loop. Both produce the same dataset version, byte for byte in content.

Object layout of a refresh of dataset D into version V::

    D/_stages/filtered/versions/V/...   per-source filtered shards (stage 1)
    D/_stages/dedup/V/...               dedup intermediates (signatures, pairs, clusters)
    D/versions/V/...                    the final shards and manifest (sealed last)
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass, replace
from functools import partial

import pyarrow.compute as pc

import pipeline
from pipeline.dataset import DatasetVersion, Manifest, config_hash, make_version_id, read_parquet
from pipeline.dedup import DedupConfig, audit_stage, candidates_stage, clusters_stage, filter_stage, plan_dedup, signatures_stage
from pipeline.process import ReadOptions, process_source, totals
from pipeline.removals import RemovalFilter, RemovalRequest, registered_requests
from pipeline.steps.base import Chain
from pipeline.steps.chain import build_chain
from pipeline.storage import ObjectInfo, ObjectStore, join

CHARS_PER_TOKEN = 4.0  # rough English BPE ratio; the report says "estimated"

# MinHash at Jaccard 0.8 with 20 bands x 6 rows (recall) and exact-Jaccard verification of
# candidates (precision): F1 1.0 on bench/dedup.py's planted near-duplicates, where
# datasketch's optimal 9 x 13 without verification gives 0.905.
DEFAULT_DEDUP = {"num_perm": 120, "bands": 20, "rows": 6, "threshold": 0.8, "verify_jaccard": True, "exact": True}


@dataclass(frozen=True)
class RefreshPlan:
    dataset_uri: str
    sources: tuple[ObjectInfo, ...]
    filter_config: dict
    dedup_config: DedupConfig
    read: ReadOptions = ReadOptions()
    target_bytes: int = 128 << 20
    removals: tuple[RemovalRequest, ...] = ()
    version: str = ""  # set by plan_refresh from everything above

    @property
    def filtered(self) -> DatasetVersion:
        return DatasetVersion(join(self.dataset_uri, "_stages", "filtered"), self.version)

    @property
    def work_uri(self) -> str:
        return join(self.dataset_uri, "_stages", "dedup", self.version)

    @property
    def final(self) -> DatasetVersion:
        return DatasetVersion(self.dataset_uri, self.version)

    @property
    def config(self) -> dict:
        return {"filters": self.filter_config, "dedup": self.dedup_config.as_dict(), "read": self.read.__dict__, "removals": [r.to_json() for r in self.removals]}


def plan_refresh(
    sources: list[ObjectInfo], dataset_uri: str, filter_config: dict, dedup_config: DedupConfig, *, read: ReadOptions = ReadOptions(),
    target_bytes: int = 128 << 20, store: ObjectStore | None = None,
) -> RefreshPlan:  # fmt: skip
    """The version id covers input ETags and sizes, every config, the registered removal
    requests and the code version: the same refresh re-run resumes the same version."""
    removals = tuple(sorted(registered_requests(dataset_uri, store), key=lambda r: r.name))
    plan = RefreshPlan(dataset_uri, tuple(sources), filter_config, dedup_config, read, target_bytes, removals)
    return replace(plan, version=make_version_id([(s.uri, s.etag, s.size) for s in sources], plan.config, pipeline.__version__))


def refresh_chain(plan: RefreshPlan) -> Chain:
    """Removal requests first (nothing removed is ever filtered, scored or deduplicated), then the filters."""
    chain = build_chain(plan.filter_config)
    if plan.removals:
        chain.steps.insert(0, RemovalFilter(list(plan.removals)))
    return chain


def filter_source(plan: RefreshPlan, source: ObjectInfo) -> dict:
    """Stage 1, one per input object: read → removals → filters → filtered shard (committed)."""
    return process_source(source, plan.filtered, chain_factory=lambda: refresh_chain(plan), read=plan.read, target_bytes=plan.target_bytes, config_hash_=config_hash(plan.config))


def plan_deduplication(plan: RefreshPlan) -> tuple[list[str], list[str]]:
    """Fix the dedup inputs (every filtered shard, sorted) in the work folder; returns the
    shards and the candidate partitions to map over."""
    shards = sorted(plan.filtered.shard_uris())
    dedup_plan = plan_dedup(shards, plan.work_uri, plan.dedup_config)
    return shards, list(dedup_plan["partitions"])


def signatures(plan: RefreshPlan, shard_uri: str) -> dict:
    return signatures_stage(shard_uri, plan.work_uri, plan.dedup_config)


def candidates(plan: RefreshPlan, partition: str) -> dict:
    return candidates_stage(partition, plan.work_uri, plan.dedup_config)


def clusters(plan: RefreshPlan) -> dict:
    return clusters_stage(plan.work_uri, plan.dedup_config)


def deduplicate_shard(plan: RefreshPlan, shard_uri: str) -> dict:
    return filter_stage(shard_uri, plan.work_uri, plan.final, plan.dedup_config)


def audit(plan: RefreshPlan) -> dict:
    """Keep the dedup removal table with the final version."""
    return audit_stage(plan.work_uri, plan.final, plan.dedup_config)


def seal(plan: RefreshPlan, filter_results: list[dict], dedup_counts: dict) -> Manifest:
    """Seal the final version with a report of what every stage kept and dropped."""
    final = plan.final
    manifest = final.manifest()
    report = summarize(plan, filter_results, dedup_counts, manifest)
    return final.seal(extra={"refresh": report}, config_hash_=config_hash(plan.config))


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
        "removal_requests": [r.name for r in plan.removals],
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


def run_refresh(plan: RefreshPlan, executor: Executor | None = None) -> Manifest:
    """The refresh without an orchestrator: the same stage functions in order (optionally
    on an executor with the same parallelism as the flow). Tests and benchmarks compare
    the flow against this."""
    run = (lambda fn, items: list(executor.map(fn, items))) if executor else (lambda fn, items: [fn(i) for i in items])
    filter_results = run(partial(filter_source, plan), list(plan.sources))
    shards, partitions = plan_deduplication(plan)
    dedup_counts = {"signatures": run(partial(signatures, plan), shards)}
    dedup_counts["candidates"] = run(partial(candidates, plan), partitions)
    dedup_counts["clusters"] = clusters(plan)
    dedup_counts["filter"] = run(partial(deduplicate_shard, plan), shards)
    dedup_counts["audit"] = audit(plan)
    return seal(plan, filter_results, dedup_counts)
