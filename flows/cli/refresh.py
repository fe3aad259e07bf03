"""`tokenmill refresh` (the corpus_refresh flow) and `tokenmill remove` (removal requests)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flows.cli import CommandError


def register(sub) -> None:
    p = sub.add_parser("refresh", help="filter + deduplicate sources into a new dataset version (corpus_refresh flow)")
    p.add_argument("sources", nargs="+", help="input URIs or globs")
    p.add_argument("--dataset", required=True)
    p.add_argument("--filters", help="filter config YAML (merged over the defaults)")
    p.add_argument("--dedup", default="{}", help='dedup settings as JSON, e.g. \'{"threshold": 0.8}\'')
    p.add_argument("--runner", choices=["process", "dask", "threads"], default="process")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dask-address")
    p.set_defaults(func=cmd_refresh)

    r = sub.add_parser("remove", help="apply a removal request to the latest version of a dataset")
    r.add_argument("--dataset", required=True)
    r.add_argument("--request", required=True, help='JSON file: {"name": ..., "doc_ids": [...], "url_patterns": [...], "reason": ...}')
    r.set_defaults(func=cmd_remove)


def cmd_refresh(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from flows.corpus_refresh import CorpusRefreshParams, corpus_refresh

    try:
        params = CorpusRefreshParams(
            sources=args.sources, dataset=args.dataset, filters=args.filters, dedup=json.loads(args.dedup),
            runner={"kind": args.runner, "workers": args.workers, "dask_address": args.dask_address},
        )  # fmt: skip
    except (ValidationError, json.JSONDecodeError) as exc:
        raise CommandError(str(exc).splitlines()[0]) from exc
    result = corpus_refresh(params)
    report = result["report"]
    print(json.dumps({"uri": result["uri"], "documents": report["documents"], "dropped": report["dropped"], "quarantined": report["quarantined"]}, indent=1))
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from pipeline.dataset import DatasetVersion, latest_version, resolve_dataset_uri
    from pipeline.removals import RemovalRequest, apply_removals, register_request, removal_version_id

    path = Path(args.request)
    if not path.exists():
        raise CommandError(f"no such request file: {path}")
    try:
        request = RemovalRequest.from_json(path.read_text())
    except (KeyError, json.JSONDecodeError) as exc:
        raise CommandError(f"{path}: not a removal request ({exc})") from exc
    uri = resolve_dataset_uri(args.dataset)
    source = latest_version(uri)
    register_request(uri, request, source.store)
    target = DatasetVersion(uri, removal_version_id(source.manifest(), [request]), source.store)
    record = apply_removals(source, target, [request])
    print(json.dumps({"from": source.uri, "to": target.uri, **record}, indent=1))
    return 0
