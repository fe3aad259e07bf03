"""`corpus_refresh`: crawl objects → filtered, deduplicated, sealed dataset version.

Orchestration only. Every stage is a function of `pipeline.refresh` mapped over its
partitions (sources, shards, band partitions); tasks pass URIs and the plan, never
documents. Resume: the version id is a hash of the inputs' ETags and sizes, every config,
the files the filters read, the removal requests and the code, and each stage records what
it finished on object storage (unit commit records, stage outputs under the work prefix), so
a re-run after a crash skips finished partitions and converges on the same version. One
refresh of a dataset runs at a time (`pipeline.lease`); `tokenmill.dataset.ready` goes out
once per sealed version.
"""

import uuid
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NONE as NO_PREFECT_CACHE
from prefect.events import emit_event
from prefect.futures import as_completed
from prefect.tasks import exponential_backoff
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline import lease, refresh
from pipeline.dataset import DatasetVersion, Manifest, resolve_dataset_uri
from pipeline.dedup import DedupConfig, DedupJob, StageMap
from pipeline.process import ReadOptions, select_sources
from pipeline.steps.chain import load_filter_config
from pipeline.storage import ObjectStore, basename

from flows.ingest import list_sources, quarantine_listing, quarantine_markdown
from flows.reporting import Progress, publish_dataset_card, publish_markdown, publish_table, publish_unit_table
from flows.retries import retry_if_transient
from flows.runners import RunnerOptions, task_runner

DATASET_READY_EVENT = "tokenmill.dataset.ready"

# Storage hiccups and worker loss are retried with backoff (the stage functions are idempotent);
# errors that would recur are not.
STAGE_TASK = dict(retries=4, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_jitter_factor=0.5, retry_condition_fn=retry_if_transient,
                  cache_policy=NO_PREFECT_CACHE)


class CorpusRefreshParams(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key ("fliters") is an error, not a silent default

    sources: list[str] = Field(..., min_length=1, description="input URIs or globs (WARC/WET/JSONL/Parquet)")
    dataset: str = Field(..., description="output dataset name (under $TOKENMILL_DATA_ROOT/datasets/) or URI")
    filters: str | dict[str, Any] | None = Field(None, description="filter config overrides: a YAML path or a mapping, merged over the defaults")
    dedup: dict[str, Any] = Field(default_factory=dict, description="DedupConfig fields over the refresh defaults (threshold, num_perm, bands, rows, exact, ...)")
    format: str | None = Field(None, description="input format; default: from file names")
    max_doc_bytes: int = Field(5_000_000, ge=1024)
    target_shard_mb: int = Field(128, ge=1)
    runner: RunnerOptions = RunnerOptions()
    wait_for_lease_s: int = Field(0, ge=0, description="wait this long for another refresh of the dataset to finish; 0 = stop at once with who holds it")
    keep_stage_versions: int = Field(1, ge=0, description="keep per-source filter outputs of this many newest versions (incremental refresh); 0 = none")

    @field_validator("filters")
    @classmethod
    def _known_filter_options(cls, value: str | dict | None) -> str | dict | None:
        check_filter_overrides(value)
        return value

    @field_validator("dedup")
    @classmethod
    def _known_dedup_settings(cls, value: dict) -> dict:
        try:
            DedupConfig(**{**refresh.DEFAULT_DEDUP, **value})
        except TypeError as exc:  # an unknown keyword
            raise ValueError(f"{exc}; known: {sorted(DedupConfig.__dataclass_fields__)}") from exc
        return value


def check_filter_overrides(overrides: str | dict | None) -> None:
    """Raise ValueError naming what is wrong in filter overrides (a YAML path or a mapping):
    a file that is missing or not YAML, an unknown step, an option no step has. Run before
    the flow starts, so a typo is one line, not a failed run in every worker."""
    import yaml

    try:
        config = load_filter_config(overrides)
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(str(exc).splitlines()[0]) from exc
    defaults = load_filter_config(None)
    # Merging only adds keys, so any key the defaults lack came from the overrides.
    unknown = [step for step in config if step not in defaults]
    unknown += [f"{step}.{option}" for step, options in defaults.items() if isinstance(options, dict) for option in config.get(step) or {} if option not in options]
    if unknown:
        raise ValueError(f"unknown filter option(s) {', '.join(unknown)}; the known ones are in pipeline/steps/default_filters.yaml")


def source_run_name(parameters: dict) -> str:
    """`filter-CC-MAIN-0001.warc.gz`: the task run says which input it reads (not `filter-source-0ae`)."""
    return f"filter-{basename(parameters['source'].uri)}"


@task(name="filter-source", task_run_name=source_run_name, **STAGE_TASK)
def filter_source(plan: refresh.RefreshPlan, source) -> dict:
    return refresh.filter_source(plan, source)


def _dedup_stage(job: DedupJob, stage: str, items: list) -> list[dict]:
    return [getattr(job, stage)(item) for item in items]


# One task name per dedup stage (what the UI and the logs show); each runs a list of items.
DEDUP_STAGES = ("plan", "signatures", "candidates", "gather", "verify", "components", "attach", "choose", "filter", "audit")
DEDUP_TASKS = {stage: task(_dedup_stage, name=f"dedup-{stage}", **STAGE_TASK) for stage in DEDUP_STAGES}
PER_SHARD = {"signatures", "gather", "filter"}  # seconds of work per item: two groups per worker balance the load
# A task costs ~0.2 s of CPU in orchestration (worker-side engine, events, the server recording
# its states): bench/flow.py. Band partitions are a fraction of that each, shards seconds.
GROUPS_PER_WORKER = {"per_shard": 2, "partition": 1}


def _gather(futures, progress: Progress | None = None, weights: list[int] | None = None) -> list:
    """Results in submission order; progress advances in completion order (by each
    future's weight: the items it carries)."""
    weight = {id(f): w for f, w in zip(futures, weights or [1] * len(futures))}
    for done in as_completed(futures):
        if progress:
            progress.advance(weight.get(id(done), 1))
    return [f.result() for f in futures]


def coarse_groups(items: list, workers: int, per_worker: int = 2) -> list[list]:
    """At most `per_worker` groups per worker, round-robin (items of one stage cost about the
    same): orchestration is paid per task, so items travel in groups."""
    n = max(1, min(len(items), per_worker * workers))
    return [items[i::n] for i in range(n)]


@flow(name="corpus-refresh-stages")
def refresh_stages(plan: refresh.RefreshPlan, workers: int) -> dict:
    """The mapped stages; runs under the task runner the parameters chose."""
    logger = get_run_logger()
    progress = Progress(2 * len(plan.sources) + 1, f"refresh {plan.final.uri}")
    filter_results = _gather(filter_source.map(plan, list(plan.sources)), progress)
    for r in filter_results:
        logger.info("%s: %d read, %d kept%s", basename(r["source"]), r["reader"].get("documents", 0), r["documents_out"], " (resumed)" if r["skipped"] else "")
    dedup = refresh.deduplicate(plan, filter_results, dedup_map(refresh.dedup_job(plan), workers, progress))
    return {"filter_results": filter_results, "dedup": dedup}


def dedup_map(job: DedupJob, workers: int, progress: Progress) -> StageMap:
    """Runs one dedup stage's items as Prefect tasks: shards in two groups per worker,
    partitions (a fraction of a task's orchestration cost each) in one group per worker.
    Results come back in item order; progress advances once for the partition stages and per
    shard written."""

    def run(stage: str, items: list) -> list:
        per_worker = GROUPS_PER_WORKER["per_shard" if stage in PER_SHARD else "partition"]
        groups = coarse_groups(list(range(len(items))), workers, per_worker)
        futures = DEDUP_TASKS[stage].map(unmapped(job), unmapped(stage), [[items[i] for i in g] for g in groups])
        results: list = [None] * len(items)
        counted = stage == "filter"
        for group, out in zip(groups, _gather(futures, progress if counted else None, [len(g) for g in groups] if counted else None)):
            for i, result in zip(group, out):
                results[i] = result
        if stage == "choose":
            progress.advance()
        return results

    return run


@flow(name="corpus-refresh", log_prints=True)
def corpus_refresh(params: CorpusRefreshParams) -> dict:
    """Read → language ID → quality → toxicity → PII per source, then corpus-wide dedup,
    then seal the version and announce it with a `tokenmill.dataset.ready` event."""
    logger = get_run_logger()
    store = ObjectStore()
    uri = resolve_dataset_uri(params.dataset)
    store.check(uri)
    sources, skipped = select_sources(list_sources(params.sources, store), params.format)
    for s in skipped:
        logger.warning("skipped %s (%s): %s", s["source"], s["reason"], s["detail"])
    filter_config = load_filter_config(params.filters)
    with lease.holding(uri, _run_label(), wait_s=params.wait_for_lease_s, store=store) as held:
        plan = refresh.plan_refresh(
            sources, uri, filter_config, DedupConfig(**{**refresh.DEFAULT_DEDUP, **params.dedup}),
            read=ReadOptions(fmt=params.format, max_doc_bytes=params.max_doc_bytes), target_bytes=params.target_shard_mb << 20, store=store,
        )  # fmt: skip
        logger.info("refresh of %d sources into %s", len(sources), plan.final.uri)
        if plan.final.is_sealed():
            logger.info("version %s is already sealed: finishing its seal if it was interrupted", plan.version)

        def run_stages(plan: refresh.RefreshPlan) -> tuple[list[dict], dict]:
            stages = refresh_stages.with_options(task_runner=task_runner(params.runner))(plan, params.runner.workers)
            return stages["filter_results"], stages["dedup"]

        plan, manifest, filter_results = refresh.settle(plan, run_stages, before_seal=held.check)
        if filter_results:
            publish_unit_table("refresh-units", filter_results, f"kept/dropped per source for {plan.final.uri}")
        manifest = refresh.finish(plan, manifest, keep_stage_versions=params.keep_stage_versions, store=store)
        announce(uri, manifest, store)
    version = DatasetVersion(uri, manifest.version, store)
    report = {**manifest.extra["refresh"], "skipped_sources": skipped}  # this run's listing: not inputs, not read
    publish_table("refresh-totals", [_totals_row(report)], "kept/dropped for the whole refresh")
    records, total = quarantine_listing(version, manifest)  # the inputs' bad records, listed in the report
    if records:
        publish_table("refresh-quarantine", records, f"the first {len(records)} of {total} quarantine records of {version.uri}")
    publish_markdown("refresh-report", render_report(version.uri, report) + quarantine_markdown(records, total), f"refresh {manifest.version}")
    card = publish_dataset_card(version.uri, report, store)
    return {"dataset": uri, "version": manifest.version, "uri": version.uri, "rows": manifest.rows, "shards": [s["uri"] for s in manifest.shards], "report": report,
            "card": card}


def _run_label() -> str:
    """Who holds the lease, as an operator reads it: the flow run's name and id."""
    from prefect.runtime import flow_run

    return f"flow run {flow_run.name} ({flow_run.id})" if flow_run.id else lease.default_holder()


def announce(uri: str, manifest: Manifest, store: ObjectStore) -> bool:
    """Emit `tokenmill.dataset.ready` once per sealed version: not again on unchanged re-runs.
    The event id is derived from the version, so a crash between emitting and recording it
    re-sends the same event, which Prefect deduplicates by id."""
    version = DatasetVersion(uri, manifest.version, store)
    if not version.needs_announcing():
        return False
    event_id = uuid.uuid5(uuid.NAMESPACE_URL, f"tokenmill:{uri}@{manifest.version}")
    emit_event(
        DATASET_READY_EVENT,
        resource={"prefect.resource.id": f"tokenmill.dataset.{basename(uri)}", "tokenmill.dataset.uri": uri, "tokenmill.dataset.version": manifest.version},
        payload={"documents": manifest.rows, "shards": len(manifest.shards), "bytes": manifest.bytes},
        id=event_id,
    )
    version.mark_announced(str(event_id))
    return True


def _totals_row(report: dict) -> dict:
    """One row: counts, then one column per drop rule (as in the per-source table)."""
    return {
        "read": report["documents_read"],
        "after_filters": report["after_filters"],
        "after_dedup": report["documents"],
        "quarantined": sum(report["quarantined"].values()),
        **dict(sorted(report["dropped"].items())),
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
| skipped (not inputs) | {', '.join(f"`{s['source']}` ({s['reason']})" for s in r.get('skipped_sources', [])) or 'none'} |
| removal requests applied | {', '.join(r['removal_requests']) or 'none'} |

## Dropped by rule

| rule | documents |
|---|---|
{drops}
"""
