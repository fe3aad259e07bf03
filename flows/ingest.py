"""`ingest`: raw crawl objects (WARC, WET, JSONL, Parquet) → a versioned document dataset.

Orchestration only: listing, mapping `pipeline.process.process_source` over the inputs,
sealing the version and publishing what happened. Each input is one task and one unit of
the version, so a re-run skips what is committed and a failed input never sinks the rest.
"""

from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.tasks import exponential_backoff
from pydantic import BaseModel, Field

import pipeline
from pipeline.dataset import DatasetVersion, canonical_json, config_hash, make_version_id, resolve_dataset_uri
from pipeline.process import ReadOptions, process_source, totals
from pipeline.storage import ObjectInfo, ObjectStore, StorageError

from flows.reporting import Progress, publish_markdown, publish_unit_table
from flows.runners import RunnerOptions, task_runner


class IngestParams(BaseModel):
    sources: list[str] = Field(..., min_length=1, description="input URIs or globs (s3://bucket/raw/*.warc.gz or local paths)")
    dataset: str = Field(..., description="dataset name (under $TOKENMILL_DATA_ROOT/datasets/) or a full URI")
    format: Literal["warc", "wet", "jsonl", "parquet"] | None = Field(None, description="input format; default: from the file name")
    batch_size: int = Field(1000, ge=1)
    max_doc_bytes: int = Field(5_000_000, ge=1024, description="larger documents are quarantined as oversize")
    target_shard_mb: int = Field(128, ge=1)
    runner: RunnerOptions = RunnerOptions()


def list_sources(patterns: list[str], store: ObjectStore) -> list[ObjectInfo]:
    """Every object the patterns name, once each, in a stable order; an empty match is an error."""
    found: dict[str, ObjectInfo] = {}
    for pattern in patterns:
        matches = store.glob(pattern)
        if not matches:
            raise StorageError(f"no input objects match {pattern!r}")
        found.update((m.uri, m) for m in matches)
    return [found[k] for k in sorted(found)]


@task(name="ingest-source", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_jitter_factor=0.5)
def ingest_source(source: ObjectInfo, dataset: str, version: str, read: ReadOptions, target_bytes: int, cfg_hash: str) -> dict:
    return process_source(source, DatasetVersion(dataset, version), read=read, target_bytes=target_bytes, config_hash_=cfg_hash)


def plan_ingest(params: IngestParams, store: ObjectStore) -> tuple[DatasetVersion, list[ObjectInfo], str]:
    """The version an ingest writes (a hash of the inputs' ETags and sizes, the config and the
    code version), its sources and config hash: the same ingest re-run resumes the same version."""
    uri = resolve_dataset_uri(params.dataset)
    store.check(uri)
    sources = list_sources(params.sources, store)
    config = params.model_dump(exclude={"runner", "sources"})
    version = DatasetVersion(uri, make_version_id([(s.uri, s.etag, s.size) for s in sources], config, pipeline.__version__), store)
    return version, sources, config_hash(config)


@flow(name="ingest", log_prints=True)
def ingest(params: IngestParams) -> dict:
    """Read every source into one new dataset version and seal it."""
    logger = get_run_logger()
    version, sources, cfg_hash = plan_ingest(params, ObjectStore())
    uri = version.dataset_uri
    logger.info("ingesting %d objects into %s", len(sources), version.uri)
    read = ReadOptions(fmt=params.format, batch_size=params.batch_size, max_doc_bytes=params.max_doc_bytes)
    progress = Progress(len(sources), f"ingest into {version.uri}")
    results, failures = [], []
    runner_flow = _map_units.with_options(task_runner=task_runner(params.runner))
    for source, outcome in zip(sources, runner_flow(sources, uri, version.version, read, params.target_shard_mb << 20, cfg_hash)):
        progress.advance()
        if isinstance(outcome, Exception):
            failures.append({"source": source.uri, "error": f"{type(outcome).__name__}: {outcome}"})
            logger.error("%s failed: %s", source.uri, outcome)
        else:
            results.append(outcome)
            logger.info("%s: %d documents, %d quarantined%s", source.uri, outcome["documents_out"], outcome["quarantined"], " (already committed)" if outcome["skipped"] else "")
    summary = {"dataset": uri, "version": version.version, "uri": version.uri, **totals(results), "failed": failures}
    publish_unit_table("ingest-units", results, f"per-input counts for {version.uri}")
    if failures:
        publish_markdown("ingest-failures", "\n".join(f"- `{f['source']}`: {f['error']}" for f in failures), "inputs that failed")
        raise StorageError(f"{len(failures)} of {len(sources)} inputs failed; the version stays open for a re-run: {canonical_json(failures)[:500]}")
    manifest = version.seal(extra={"ingest": summary}, config_hash_=cfg_hash)
    summary.update(rows=manifest.rows, bytes=manifest.bytes, shards=[s["uri"] for s in manifest.shards])
    publish_markdown("ingest-report", _report(summary), f"ingest of {version.uri}")
    return summary


@flow(name="ingest-units")
def _map_units(sources: list[ObjectInfo], dataset: str, version: str, read: ReadOptions, target_bytes: int, cfg_hash: str) -> list:
    futures = ingest_source.map(sources, dataset, version, read, target_bytes, cfg_hash)
    return [f.result(raise_on_failure=False) for f in futures]


def _report(summary: dict) -> str:
    lines = [
        f"# Ingest → `{summary['uri']}`",
        "",
        f"- documents read: **{summary['read']:,}**, written: **{summary['rows']:,}** in {len(summary['shards'])} shards ({summary['bytes'] / 1e6:.1f} MB)",
        f"- quarantined: {sum(summary['quarantined'].values()):,} " + (f"({', '.join(f'{k}: {v}' for k, v in sorted(summary['quarantined'].items()))})" if summary["quarantined"] else ""),
    ]
    return "\n".join(lines)
