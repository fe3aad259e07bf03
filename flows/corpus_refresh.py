"""`corpus_refresh`: crawl objects → filtered, deduplicated, sealed dataset version.

Orchestration only. Every stage is a function of `pipeline.refresh` mapped over its
partitions (sources, shards, band partitions); tasks pass URIs and the plan, never
documents. Resume: the version id is a hash of the inputs' ETags and sizes, every config
and the code version, and each stage records what it finished on object storage (unit
commits in manifest logs, stage outputs under the work prefix), so a re-run after a crash
skips finished partitions and converges on the same version.
"""

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE as NO_PREFECT_CACHE
from prefect.events import emit_event
from prefect.futures import as_completed
from prefect.tasks import exponential_backoff
from pydantic import BaseModel, Field

from pipeline import refresh
from pipeline.dataset import resolve_dataset_uri
from pipeline.dedup import DedupConfig
from pipeline.process import ReadOptions
from pipeline.steps.chain import load_filter_config
from pipeline.storage import ObjectStore, basename

from flows.ingest import list_sources
from flows.reporting import Progress, publish_markdown, publish_table, publish_unit_table
from flows.runners import RunnerOptions, task_runner

DATASET_READY_EVENT = "tokenmill.dataset.ready"

# Storage hiccups and worker loss are retried with backoff; the stage functions are idempotent.
STAGE_TASK = dict(retries=4, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_jitter_factor=0.5, cache_policy=NO_PREFECT_CACHE)


class CorpusRefreshParams(BaseModel):
    sources: list[str] = Field(..., min_length=1, description="input URIs or globs (WARC/WET/JSONL/Parquet)")
    dataset: str = Field(..., description="output dataset name (under $TOKENMILL_DATA_ROOT/datasets/) or URI")
    filters: str | dict[str, Any] | None = Field(None, description="filter config overrides: a YAML path or a mapping, merged over the defaults")
    dedup: dict[str, Any] = Field(default_factory=dict, description="DedupConfig fields over the refresh defaults (threshold, num_perm, bands, rows, exact, ...)")
    format: str | None = Field(None, description="input format; default: from file names")
    max_doc_bytes: int = Field(5_000_000, ge=1024)
    target_shard_mb: int = Field(128, ge=1)
    runner: RunnerOptions = RunnerOptions()


@task(name="filter-source", **STAGE_TASK)
def filter_source(plan: refresh.RefreshPlan, source) -> dict:
    return refresh.filter_source(plan, source)


@task(name="dedup-signatures", **STAGE_TASK)
def signatures(plan: refresh.RefreshPlan, shard_uri: str) -> dict:
    return refresh.signatures(plan, shard_uri)


@task(name="dedup-plan", **STAGE_TASK)
def plan_deduplication(plan: refresh.RefreshPlan) -> tuple[list[str], list[str]]:
    return refresh.plan_deduplication(plan)


@task(name="dedup-candidates", **STAGE_TASK)
def candidates(plan: refresh.RefreshPlan, partitions: list[str]) -> list[dict]:
    return [refresh.candidates(plan, p) for p in partitions]


@task(name="dedup-clusters", **STAGE_TASK)
def clusters(plan: refresh.RefreshPlan) -> dict:
    return refresh.clusters(plan)


@task(name="dedup-shard", **STAGE_TASK)
def deduplicate_shard(plan: refresh.RefreshPlan, shard_uri: str) -> dict:
    return refresh.deduplicate_shard(plan, shard_uri)


@task(name="dedup-audit", **STAGE_TASK)
def audit(plan: refresh.RefreshPlan) -> dict:
    return refresh.audit(plan)


def _gather(futures, progress: Progress | None = None) -> list:
    """Results in submission order; progress advances in completion order."""
    for _ in as_completed(futures):
        if progress:
            progress.advance()
    return [f.result() for f in futures]


def coarse_groups(items: list, workers: int) -> list[list]:
    """About two groups per worker: each task costs ~0.2–0.5 s of orchestration and a band
    partition only a fraction of that, so partitions travel in groups (shards, seconds of
    work each, stay one task apiece)."""
    n = max(1, min(len(items), 2 * workers))
    return [items[i::n] for i in range(n)]


def _flat(groups: list[list[dict]]) -> list[dict]:
    return [item for group in groups for item in group]


@flow(name="corpus-refresh-stages")
def refresh_stages(plan: refresh.RefreshPlan, workers: int) -> dict:
    """The mapped stages; runs under the task runner the parameters chose."""
    logger = get_run_logger()
    progress = Progress(2 * len(plan.sources) + 1, f"refresh {plan.final.uri}")
    filter_results = _gather(filter_source.map(plan, list(plan.sources)), progress)
    for r in filter_results:
        logger.info("%s: %d read, %d kept%s", basename(r["source"]), r["reader"].get("documents", 0), r["documents_out"], " (resumed)" if r["skipped"] else "")
    shards, partitions = plan_deduplication(plan)
    dedup: dict = {"signatures": _gather(signatures.map(plan, shards))}
    dedup["candidates"] = _flat(_gather(candidates.map(plan, coarse_groups(partitions, workers))))
    dedup["clusters"] = clusters(plan)
    progress.advance()
    dedup["filter"] = _gather(deduplicate_shard.map(plan, shards), progress)
    dedup["audit"] = audit(plan)
    return {"filter_results": filter_results, "dedup": dedup}


@flow(name="corpus-refresh", log_prints=True)
def corpus_refresh(params: CorpusRefreshParams) -> dict:
    """Read → language ID → quality → toxicity → PII per source, then corpus-wide dedup,
    then seal the version and announce it with a `tokenmill.dataset.ready` event."""
    logger = get_run_logger()
    store = ObjectStore()
    uri = resolve_dataset_uri(params.dataset)
    store.check(uri)
    sources = list_sources(params.sources, store)
    filter_config = load_filter_config(params.filters)
    plan = refresh.plan_refresh(
        sources, uri, filter_config, DedupConfig(**{**refresh.DEFAULT_DEDUP, **params.dedup}),
        read=ReadOptions(fmt=params.format, max_doc_bytes=params.max_doc_bytes), target_bytes=params.target_shard_mb << 20, store=store,
    )  # fmt: skip
    logger.info("refresh of %d sources into %s", len(sources), plan.final.uri)
    if plan.final.manifest().sealed:
        logger.info("version %s is already sealed: nothing to do", plan.version)
        manifest = plan.final.manifest()
    else:
        stages = refresh_stages.with_options(task_runner=task_runner(params.runner))(plan, params.runner.workers)
        manifest = refresh.seal(plan, stages["filter_results"], stages["dedup"])
        publish_unit_table("refresh-units", stages["filter_results"], f"kept/dropped per source for {plan.final.uri}")
    report = manifest.extra["refresh"]
    publish_table("refresh-totals", [_totals_row(report)], "kept/dropped for the whole refresh")
    publish_markdown("refresh-report", render_report(plan.final.uri, report), f"refresh {plan.version}")
    emit_event(
        DATASET_READY_EVENT,
        resource={"prefect.resource.id": f"tokenmill.dataset.{basename(uri)}", "tokenmill.dataset.uri": uri, "tokenmill.dataset.version": plan.version},
        payload={"documents": manifest.rows, "shards": len(manifest.shards), "bytes": manifest.bytes},
    )
    return {"dataset": uri, "version": plan.version, "uri": plan.final.uri, "rows": manifest.rows, "shards": [s["uri"] for s in manifest.shards], "report": report}


def _totals_row(report: dict) -> dict:
    return {
        "read": report["documents_read"],
        "after_filters": report["after_filters"],
        "after_dedup": report["documents"],
        "quarantined": sum(report["quarantined"].values()),
        "dropped": ", ".join(f"{k}={v}" for k, v in report["dropped"].items()) or "-",
    }


def render_report(uri: str, r: dict) -> str:
    mix = ", ".join(f"{lang} {n / max(r['documents'], 1):.1%}" for lang, n in list(r["languages"].items())[:8])
    drops = "\n".join(f"| {reason} | {n:,} |" for reason, n in sorted(r["dropped"].items(), key=lambda kv: -kv[1])) or "| - | 0 |"
    quarantine = ", ".join(f"{k}: {v}" for k, v in r["quarantined"].items()) or "none"
    return f"""# Corpus refresh → `{uri}`

| | |
|---|---|
| sources | {r['sources']} ({r['source_bytes'] / 1e6:.1f} MB) |
| documents read | {r['documents_read']:,} |
| after filters | {r['after_filters']:,} |
| after dedup | **{r['documents']:,}** in {r['shards']} shards ({r['bytes'] / 1e6:.1f} MB Parquet) |
| dedup rate | {r['dedup_rate']:.2%} ({r['dedup_removed']:,} removed) |
| text | {r['text_bytes'] / 1e6:.1f} MB, ≈ {r['estimated_tokens']:,} tokens (estimated at 4 chars/token) |
| languages | {mix} |
| quarantined | {quarantine} |
| removal requests applied | {', '.join(r['removal_requests']) or 'none'} |

## Dropped by rule

| rule | documents |
|---|---|
{drops}
"""
