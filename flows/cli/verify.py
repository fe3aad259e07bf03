"""`tokenmill verify DATASET[@VERSION]`: check a version against its manifest."""

from __future__ import annotations

import argparse

from flows.cli import CommandError


def register(sub) -> None:
    p = sub.add_parser("verify", help="check a dataset version: shards present with the listed sizes (and checksums), no unlisted objects, listed if sealed")
    p.add_argument("dataset", help="DATASET or DATASET@VERSION (default: the latest version)")
    p.add_argument("--checksums", action="store_true", help="also read every shard and compare sha256 and row counts (reads all the data)")
    p.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    from pipeline.dataset import DatasetVersion, latest_version, parse_dataset_ref
    from pipeline.storage import ObjectStore

    uri, version_id = parse_dataset_ref(args.dataset)
    store = ObjectStore()
    store.check(uri)
    version = DatasetVersion(uri, version_id, store) if version_id and version_id != "latest" else latest_version(uri, store)
    manifest = version.manifest()
    if not manifest.units:
        raise CommandError(f"{version.uri}: no such version (nothing committed)")
    problems = version.verify(checksums=args.checksums)
    state = "sealed" if manifest.sealed else "open (not sealed)"
    print(f"{version.uri}: {state}, {manifest.rows:,} rows in {len(manifest.shards)} shards, {len(manifest.units)} units")
    for problem in problems:
        print(f"  PROBLEM {problem}")
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0
