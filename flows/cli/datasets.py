"""`tokenmill datasets`: the finished versions of a dataset, which one `latest` names, when each
was sealed and where it is."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone

from flows.cli import CommandError


def register(sub) -> None:
    d = sub.add_parser("datasets", help="list the finished versions of a dataset (newest last; `latest` marked)")
    d.add_argument("dataset", help="dataset name or URI")
    d.set_defaults(func=cmd_datasets)


def cmd_datasets(args: argparse.Namespace) -> int:
    from flows.cli.ingest import format_table
    from pipeline.dataset import DatasetVersion, latest_version, resolve_dataset_uri, sealed_versions
    from pipeline.storage import ObjectStore

    uri = resolve_dataset_uri(args.dataset)
    store = ObjectStore()
    store.check(uri)
    versions = sealed_versions(uri, store)
    if not versions:
        raise CommandError(f"no finished versions under {uri}")
    latest = latest_version(uri, store).version
    rows = [
        [v["version"], "latest" if v["version"] == latest else "", _utc(v.get("sealed_at") or v["created_at"]), v["rows"], DatasetVersion(uri, v["version"], store).uri]
        for v in versions
    ]
    print(format_table(["version", "", "sealed (UTC)", "rows", "uri"], rows))
    return 0


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
