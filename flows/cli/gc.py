"""`tokenmill gc DATASET`: delete what crashed or superseded runs left and intermediates no
longer needed (see `pipeline.gc`), under the dataset's lease."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("gc", help="delete orphans, finished-refresh intermediates and old per-source filter outputs of a dataset")
    p.add_argument("dataset", help="dataset name or URI")
    p.add_argument("--keep-stages", type=int, default=1, metavar="N", help="keep per-source filter outputs of the N newest versions (incremental refresh); 0 = none")
    p.add_argument("--unsealed", action="store_true", help="also delete versions that were never sealed (a crashed run re-run later starts over)")
    p.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="wait this long for a running refresh to finish")
    p.set_defaults(func=cmd_gc)


def cmd_gc(args: argparse.Namespace) -> int:
    from pipeline import gc
    from pipeline.dataset import resolve_dataset_uri
    from pipeline.lease import holding
    from pipeline.storage import ObjectStore

    uri = resolve_dataset_uri(args.dataset)
    store = ObjectStore()
    store.check(uri)
    with holding(uri, what="gc", wait_s=args.wait, store=store):
        report = gc.collect(uri, keep_stage_versions=args.keep_stages, unsealed=args.unsealed, dry_run=args.dry_run, store=store)
    print(json.dumps({"dataset": uri, "dry_run": args.dry_run, **report}, indent=1, sort_keys=True))
    return 0
