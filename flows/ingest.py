"""`ingest`: raw crawl objects (WARC, WET, JSONL, Parquet) → a versioned document dataset.

Orchestration only: listing, mapping `pipeline.process.process_source` over the inputs,
sealing the version and publishing what happened. Each input is one task and one unit of
the version, so a re-run skips what is committed and a failed input never sinks the rest.
Objects that are not inputs (`_SUCCESS`, README, folder markers) are skipped and listed in
the report; bad records inside inputs are quarantined by the readers; a task is retried only
for transient storage/network trouble (`flows.retries`).
"""

from typing import Literal

import pyarrow as pa

from prefect import flow, get_run_logger, task
from prefect.tasks import exponential_backoff
from pydantic import BaseModel, Field

from pipeline.dataset import DatasetVersion, Manifest, config_hash, make_version_id, read_parquet, resolve_dataset_uri
from pipeline.fingerprint import code_fingerprint
from pipeline.process import ReadOptions, process_source, select_sources, totals
from pipeline.storage import ObjectInfo, ObjectStore, StorageError

from flows.reporting import Progress, publish_markdown, publish_table, publish_unit_table
from flows.retries import retry_if_transient
from flows.runners import RunnerOptions, task_runner


class IngestParams(BaseModel):
    sources: list[str] = Field(..., min_length=1, description="input URIs or globs (s3://bucket/raw/*.warc.gz or local paths)")
    dataset: str = Field(..., description="dataset name (under $TOKENMILL_DATA_ROOT/datasets/) or a full URI")
    format: Literal["warc", "wet", "jsonl", "parquet"] | None = Field(None, description="input format; default: from the file name")
    batch_size: int = Field(1000, ge=1)
    max_doc_bytes: int = Field(5_000_000, ge=1024, description="larger documents are quarantined as oversize")
    target_shard_mb: int = Field(128, ge=1)
    runner: RunnerOptions = RunnerOptions()


class IngestFailed(StorageError):
    """Some inputs failed (after retries of transient errors); `failures` lists them."""

    def __init__(self, message: str, failures: list[dict]):
        super().__init__(message)
        self.failures = failures


def list_sources(patterns: list[str], store: ObjectStore) -> list[ObjectInfo]:
    """Every object the patterns name, once each, in a stable order; an empty match is an
    error. Not all are inputs: `pipeline.process.select_sources` says which to read."""
    found: dict[str, ObjectInfo] = {}
    for pattern in patterns:
        matches = store.glob(pattern)
        if not matches:
            raise StorageError(f"no input objects match {pattern!r}")
        found.update((m.uri, m) for m in matches)
    return [found[k] for k in sorted(found)]


@task(name="ingest-source", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_jitter_factor=0.5, retry_condition_fn=retry_if_transient)
def ingest_source(source: ObjectInfo, dataset: str, version: str, read: ReadOptions, target_bytes: int, cfg_hash: str) -> dict:
    return process_source(source, DatasetVersion(dataset, version), read=read, target_bytes=target_bytes, config_hash_=cfg_hash)


def plan_ingest(params: IngestParams, store: ObjectStore) -> tuple[DatasetVersion, list[ObjectInfo], list[dict], str]:
    """The version an ingest writes (a hash of the inputs' ETags and sizes, the config and the
    code version), its sources, the objects skipped (not inputs) and the config hash: the same
    ingest re-run resumes the same version."""
    uri = resolve_dataset_uri(params.dataset)
    store.check(uri)
    sources, skipped = select_sources(list_sources(params.sources, store), params.format)
    if not sources:
        raise StorageError(f"none of the {len(skipped)} objects matching {params.sources} is an input: {', '.join(s['source'] for s in skipped[:5])}")
    config = params.model_dump(exclude={"runner", "sources"})
    version = DatasetVersion(uri, make_version_id([(s.uri, s.etag, s.size) for s in sources], config, code_fingerprint()), store)
    return version, sources, skipped, config_hash(config)


@flow(name="ingest", log_prints=True)
def ingest(params: IngestParams) -> dict:
    """Read every source into one new dataset version and seal it."""
    logger = get_run_logger()
    version, sources, skipped, cfg_hash = plan_ingest(params, ObjectStore())
    uri = version.dataset_uri
    logger.info("ingesting %d objects into %s", len(sources), version.uri)
    for s in skipped:
        logger.warning("skipped %s (%s): %s", s["source"], s["reason"], s["detail"])
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
    summary = {"dataset": uri, "version": version.version, "uri": version.uri, **totals(results), "failed": failures, "skipped_sources": skipped}
    publish_unit_table("ingest-units", results, f"per-input counts for {version.uri}")
    if skipped:
        publish_table("ingest-skipped", skipped, "objects not read: not inputs")
    if failures:
        publish_table("ingest-failures", failures, "inputs that failed")
        raise IngestFailed(f"{len(failures)} of {len(sources)} inputs failed; the version stays open for a re-run", failures)
    manifest = version.seal(extra={"ingest": summary}, config_hash_=cfg_hash)
    summary.update(rows=manifest.rows, bytes=manifest.bytes, shards=[s["uri"] for s in manifest.shards], units=source_rows(results))
    records, total = quarantine_listing(version, manifest)
    summary.update(quarantine_files=version.quarantine_uris(manifest), quarantine_rows=total)
    if records:
        publish_table("ingest-quarantine", records, f"the first {len(records)} of {total} quarantine records of {version.uri}")
    publish_markdown("ingest-report", _report(summary) + quarantine_markdown(records, total), f"ingest of {version.uri}")
    return summary


QUARANTINE_LISTED = 200  # quarantine records shown in a run's report (all are in the version's quarantine/ files)


def quarantine_listing(version: DatasetVersion, manifest: Manifest, limit: int = QUARANTINE_LISTED) -> tuple[list[dict], int]:
    """Quarantine records of a version for its report (source, offset, reason, detail; by
    source, then offset), at most `limit`, shared so that every damaged input and each of its
    reasons shows while room lasts; and how many quarantine records the version holds in all."""
    files = sorted(
        (u.get("counts", {}).get("source", ""), u["quarantine"]["uri"], u["quarantine"].get("rows", 0))
        for u in manifest.units.values() if u.get("quarantine", {}).get("uri")
    )  # fmt: skip
    total = sum(rows for _, _, rows in files)
    per_file = max(3, limit // max(len(files), 1))
    picked: list[tuple[pa.Table, set[int]]] = []
    room = limit
    for _, uri, _ in files:
        if room <= 0:
            break
        table = read_parquet(version.store, uri, columns=["source", "offset", "reason", "detail"])
        table = table.sort_by([("source", "ascending"), ("offset", "ascending")])
        # The first record of each reason, then the earliest others, up to the file's share.
        first_of: dict[str, int] = {}
        for idx, reason in enumerate(table.column("reason").to_pylist()):
            first_of.setdefault(reason, idx)
        share = min(room, max(per_file, len(first_of)), table.num_rows)
        picks = set(sorted(first_of.values())[:share])
        _add_earliest(picks, share)
        picked.append((table, picks))
        room -= share
    for table, picks in picked:  # room left by inputs with few records: the others fill it
        if room <= 0:
            break
        grown = min(table.num_rows, len(picks) + room)
        room -= grown - len(picks)
        _add_earliest(picks, grown)
    records = [row for table, picks in picked for row in table.take(sorted(picks)).to_pylist()]
    return records, total


def _add_earliest(picks: set[int], size: int) -> None:
    """Grow `picks` to `size` with the smallest row indexes not in it yet."""
    idx = 0
    while len(picks) < size:
        picks.add(idx)
        idx += 1


def quarantine_markdown(records: list[dict], total: int) -> str:
    """A report section listing quarantine records (markdown table; cells escaped)."""
    if not records:
        return "\n\n## Quarantined records\n\nnone\n"
    shown = f"the first {len(records)} of {total:,}" if len(records) < total else f"all {total:,}"
    lines = [
        "",
        "",
        f"## Quarantined records ({shown}; every one is in the version's `quarantine/` files)",
        "",
        "| source | offset | reason | detail |",
        "|---|---|---|---|",
        *(f"| `{_cell(r['source'])}` | {'' if r['offset'] is None else r['offset']} | {r['reason']} | {_cell(r['detail'] or '')} |" for r in records),
    ]
    return "\n".join(lines) + "\n"


def _cell(text: str, width: int = 300) -> str:
    """Text safe inside a markdown table cell: one line, pipes and backticks escaped, bounded."""
    text = " ".join(text.split()).replace("|", "\\|").replace("`", "'")
    return text if len(text) <= width else text[: width - 1] + "…"


def source_rows(results: list[dict]) -> list[dict]:
    """Per input: documents read and kept, and quarantined records by reason."""
    return [
        {"source": r["source"], "read": r["reader"].get("documents", 0), "kept": r["documents_out"], "quarantined": dict(sorted(r["reader"].get("quarantined", {}).items()))}
        for r in sorted(results, key=lambda r: r["source"])
    ]


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
        f"- skipped (not inputs): {len(summary['skipped_sources'])}",
        "",
        "| input | read | kept | quarantined |",
        "|---|---|---|---|",
        *(f"| `{u['source']}` | {u['read']:,} | {u['kept']:,} | {format_reasons(u['quarantined'])} |" for u in summary["units"]),
        *(f"| `{s['source']}` | skipped: {s['reason']} | | |" for s in summary["skipped_sources"]),
    ]
    return "\n".join(lines)


def format_reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in counts.items()) or "-"
