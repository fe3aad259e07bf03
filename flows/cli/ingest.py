"""`tokenmill ingest` and `tokenmill datasets`: read crawl data into a dataset version; list versions."""

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
    p.add_argument("--shard-mb", type=int, default=128)
    p.set_defaults(func=cmd_ingest)

    d = sub.add_parser("datasets", help="list the finished versions of a dataset")
    d.add_argument("dataset", help="dataset name or URI")
    d.set_defaults(func=cmd_datasets)


def cmd_ingest(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from flows.cli.progress import run_with_progress
    from flows.ingest import IngestParams, ingest, plan_ingest
    from pipeline.storage import ObjectStore

    try:
        params = IngestParams(sources=args.sources, dataset=args.dataset, format=args.format, target_shard_mb=args.shard_mb, runner={"workers": args.workers})
    except ValidationError as exc:
        raise CommandError(exc.errors()[0]["msg"]) from exc
    version, sources, _ = plan_ingest(params, ObjectStore())
    summary = run_with_progress(f"ingest → {version.uri}", len(sources), lambda: ingest(params), lambda: len(version.manifest().units))
    print(json.dumps({k: summary[k] for k in ("uri", "rows", "bytes", "quarantined")}, indent=1))
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from pipeline.dataset import resolve_dataset_uri, sealed_versions
    from pipeline.storage import ObjectStore

    uri = resolve_dataset_uri(args.dataset)
    store = ObjectStore()
    store.check(uri)
    versions = sealed_versions(uri, store)
    if not versions:
        raise CommandError(f"no finished versions under {uri}")
    for v in versions:
        print(f"{v['version']}  rows={v['rows']}  seq={v['seq']}")
    return 0
