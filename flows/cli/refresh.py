"""`tokenmill refresh` (the corpus_refresh flow); `tokenmill remove` is in flows/cli/removals.py."""

from __future__ import annotations

import argparse
import json

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


def cmd_refresh(args: argparse.Namespace) -> int:
    from flows.cli.ingest import format_table
    from flows.cli.progress import run_following_progress
    from flows.corpus_refresh import CorpusRefreshParams, corpus_refresh

    try:
        dedup = json.loads(args.dedup)
    except json.JSONDecodeError as exc:
        raise CommandError(f"--dedup: not JSON ({exc})") from exc
    # Validated here, before any flow run starts: a typo in the filter file or the dedup
    # settings is one line naming the field (main() prints pydantic errors that way).
    params = CorpusRefreshParams(
        sources=args.sources, dataset=args.dataset, filters=args.filters, dedup=dedup,
        runner={"kind": args.runner, "workers": args.workers, "dask_address": args.dask_address},
    )  # fmt: skip
    result = run_following_progress(f"refresh → {args.dataset}", lambda: corpus_refresh(params))
    report = result["report"]
    if report["dropped"]:
        print(format_table(["dropped by rule", "documents"], sorted(report["dropped"].items(), key=lambda kv: -kv[1])))
    print(json.dumps({"uri": result["uri"], "documents_read": report["documents_read"], "after_filters": report["after_filters"],
                      "documents": report["documents"], "quarantined": report["quarantined"]}, indent=1))  # fmt: skip
    return 0
