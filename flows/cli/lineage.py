"""`tokenmill lineage URL_OR_ID`: every dataset version that held a document and every
training run that read one of those versions."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("lineage", help="which dataset versions held a document (id or URL) and which training runs read them")
    p.add_argument("url_or_id")
    p.add_argument("--dataset", action="append", help="look only in this dataset (repeatable); default: every dataset under the data root")
    p.set_defaults(func=cmd_lineage)


def cmd_lineage(args: argparse.Namespace) -> int:
    from pipeline.dataset import resolve_dataset_uri
    from pipeline.lineage import find

    datasets = [resolve_dataset_uri(d) for d in args.dataset] if args.dataset else None
    print(json.dumps(find(args.url_or_id, datasets=datasets), indent=1, sort_keys=True))
    return 0
