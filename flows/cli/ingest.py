"""`tokenmill ingest`: read crawl data into a dataset version (`tokenmill datasets` lists versions)."""

from __future__ import annotations

import argparse
import json

from flows.cli import CommandError


def register(sub) -> None:
    p = sub.add_parser("ingest", help="read WARC/WET/JSONL/Parquet objects into a new dataset version")
    p.add_argument("sources", nargs="+", help="input URIs or globs (s3://bucket/raw/*.warc.gz, /data/*.jsonl.gz)")
    p.add_argument("--dataset", required=True, help="dataset name or URI")
    p.add_argument("--format", choices=["warc", "wet", "jsonl", "parquet"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--runner", choices=["process", "threads", "dask"], default="process", help="where the per-input tasks run (default: worker processes)")
    p.add_argument("--shard-mb", type=int, default=128)
    p.set_defaults(func=cmd_ingest)


def cmd_ingest(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from flows.cli.progress import run_with_progress
    from flows.ingest import IngestFailed, IngestParams, ingest, plan_ingest
    from pipeline.storage import ObjectStore

    try:
        params = IngestParams(sources=args.sources, dataset=args.dataset, format=args.format, target_shard_mb=args.shard_mb, runner={"kind": args.runner, "workers": args.workers})
    except ValidationError as exc:
        raise CommandError(exc.errors()[0]["msg"]) from exc
    version, sources, _, _ = plan_ingest(params, ObjectStore())
    try:
        summary = run_with_progress(f"ingest → {version.uri}", len(sources), lambda: ingest(params), lambda: len(version.manifest().units))
    except IngestFailed as exc:
        print(format_table(["failed input", "error"], [[f["source"], f["error"]] for f in exc.failures]))
        raise CommandError(str(exc)) from exc
    print(format_table(["input", "read", "kept", "quarantined", "reasons"], source_table(summary)))
    if summary.get("quarantine_rows"):
        print(f"{summary['quarantine_rows']} quarantine records (offset, reason, detail) in {len(summary['quarantine_files'])} files under {summary['uri']}/quarantine/")
    print(json.dumps({k: summary[k] for k in ("uri", "rows", "bytes", "quarantined", "quarantine_rows")} | {"skipped": len(summary["skipped_sources"])}, indent=1))
    return 0


def source_table(summary: dict) -> list[list]:
    """One row per input with its quarantine counts by reason, then one per object skipped."""
    from flows.ingest import format_reasons

    rows: list[list] = [[u["source"], u["read"], u["kept"], sum(u["quarantined"].values()), format_reasons(u["quarantined"])] for u in summary["units"]]
    rows += [[s["source"], "-", "-", "-", f"skipped: {s['reason']}"] for s in summary["skipped_sources"]]
    return rows


def format_table(header: list[str], rows: list[list]) -> str:
    """A plain-text table, columns as wide as their widest cell (nothing cut); numbers right-aligned."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    numeric = [all(isinstance(row[i], int) or row[i] == "-" for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip() for row in cells)
