"""`tokenmill remove`: file a removal request (applied to the latest version at once and to
every later refresh) or withdraw one; `tokenmill removals`: list a dataset's requests."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from flows.cli import CommandError


def register(sub) -> None:
    r = sub.add_parser("remove", help="file a removal request (applied to the latest version now and to every later refresh), or withdraw one")
    r.add_argument("--dataset", required=True)
    what = r.add_mutually_exclusive_group(required=True)
    what.add_argument("--request", help='JSON file: {"name": ..., "doc_ids": [...], "urls": [...], "url_globs": [...], "reason": ...}')
    what.add_argument("--withdraw", metavar="NAME", help="withdraw the request NAME: later refreshes no longer apply it")
    r.add_argument("--reason", default="", help="with --withdraw: why (kept in the removal log)")
    r.add_argument("--wait", type=float, default=60.0, metavar="SECONDS", help="wait this long for a running refresh or gc before leaving the request to it")
    r.set_defaults(func=cmd_remove)

    ls = sub.add_parser("removals", help="list a dataset's removal requests (names and sizes; never their contents)")
    ls.add_argument("dataset")
    ls.set_defaults(func=cmd_removals)


def cmd_remove(args: argparse.Namespace) -> int:
    from pipeline.dataset import DatasetVersion, latest_version, resolve_dataset_uri
    from pipeline.storage import ObjectStore
    from pipeline.lease import LeaseHeld, holding
    from pipeline.removals import RemovalRequest, apply_removals, register_request, removal_version_id, withdraw_request

    uri = resolve_dataset_uri(args.dataset)
    if args.withdraw:
        print(json.dumps({"withdrawn": args.withdraw, "record": withdraw_request(uri, args.withdraw, args.reason)}, indent=1))
        return 0
    path = Path(args.request)
    if not path.exists():
        raise CommandError(f"no such request file: {path}")
    try:
        request = RemovalRequest.from_json(path.read_text())
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CommandError(f"{path}: not a removal request ({exc})") from exc
    store = ObjectStore()
    store.check(uri)
    # Registered first: a refresh running now reads the log again when it seals and applies it.
    register_request(uri, request, store)
    try:
        with holding(uri, what="removal", wait_s=args.wait, store=store):
            source = latest_version(uri, store)
            target = DatasetVersion(uri, removal_version_id(source.manifest(), [request]), store)
            record = apply_removals(source, target, [request])
    except LeaseHeld as exc:
        print(json.dumps({"registered": request.name, "applied": False, "why": f"{exc}; that refresh applies the request when it seals"}, indent=1))
        return 0
    print(json.dumps({"registered": request.name, "from": source.uri, "to": target.uri, **record}, indent=1))
    return 0


def cmd_removals(args: argparse.Namespace) -> int:
    from pipeline.dataset import resolve_dataset_uri
    from pipeline.removals import effective_requests

    for request in effective_requests(resolve_dataset_uri(args.dataset)):
        print(f"{request.name}  ids={len(request.doc_ids)}  urls={len(request.urls)}  globs={len(request.url_globs)}")
    return 0
