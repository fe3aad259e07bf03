"""Removal requests (privacy law, takedowns): document ids and URL patterns that must leave
a dataset and stay out of every later version.

A request is registered with the dataset (`<dataset>/_removals/<name>.json`, written once),
applied to an existing version to produce a new one (unchanged shards are shared by
reference, changed ones rewritten), and applied automatically by later refreshes, whose
per-shard chain starts with a `RemovalFilter` over every registered request.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.dataset import DatasetVersion, Manifest, ShardEntry, ShardWriter, canonical_json, read_parquet
from pipeline.steps.base import Step
from pipeline.storage import ObjectStore, PreconditionFailed, StorageError, join


@dataclass(frozen=True)
class RemovalRequest:
    name: str
    doc_ids: tuple[str, ...] = ()
    url_patterns: tuple[str, ...] = ()  # shell-style (`https://example.com/users/*`)
    reason: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", self.name):
            raise ValueError(f"removal request names are [A-Za-z0-9_.-]: {self.name!r}")
        if not (self.doc_ids or self.url_patterns):
            raise ValueError(f"removal request {self.name!r} names no document id and no URL pattern")

    @classmethod
    def from_json(cls, text: str | bytes) -> "RemovalRequest":
        body = json.loads(text)
        return cls(body["name"], tuple(body.get("doc_ids", ())), tuple(body.get("url_patterns", ())), body.get("reason", ""))

    def to_json(self) -> str:
        return canonical_json({"name": self.name, "doc_ids": list(self.doc_ids), "url_patterns": list(self.url_patterns), "reason": self.reason})


def register_request(dataset_uri: str, request: RemovalRequest, store: ObjectStore | None = None) -> str:
    """Record a request with the dataset (once; a different request under the same name is refused)."""
    store = store or ObjectStore()
    uri = join(dataset_uri, "_removals", f"{request.name}.json")
    try:
        store.put_bytes(uri, request.to_json().encode(), if_none_match=True)
    except PreconditionFailed:
        if RemovalRequest.from_json(store.get_bytes(uri)) != request:
            raise StorageError(f"a different removal request named {request.name!r} is already registered") from None
    return uri


def registered_requests(dataset_uri: str, store: ObjectStore | None = None) -> list[RemovalRequest]:
    store = store or ObjectStore()
    return [RemovalRequest.from_json(store.get_bytes(o.uri)) for o in store.list(join(dataset_uri, "_removals") + "/") if o.uri.endswith(".json")]


def url_pattern_regex(pattern: str) -> str:
    """A shell-style URL pattern as an anchored RE2 expression (`*` spans `/`: a takedown of
    `https://site/user/*` covers everything below it)."""
    return "^" + ".*".join(".".join(re.escape(part) for part in chunk.split("?")) for chunk in pattern.split("*")) + "$"


class RemovalFilter(Step):
    """Drops documents named by removal requests; the drop reason names the request."""

    name = "removal"

    def __init__(self, requests: list[RemovalRequest]):
        super().__init__()
        self.requests = requests
        self._url_regex = {r.name: "|".join(url_pattern_regex(p) for p in r.url_patterns) for r in requests if r.url_patterns}

    def annotate(self, table: pa.Table) -> tuple[pa.Table, pa.Array | None]:
        reasons = pa.nulls(table.num_rows, pa.string())
        urls = table.column("url").fill_null("")
        for request in self.requests:
            hit = pc.is_in(table.column("id"), value_set=pa.array(request.doc_ids, pa.string())) if request.doc_ids else None
            if request.name in self._url_regex:
                url_hit = pc.match_substring_regex(urls, self._url_regex[request.name])
                hit = url_hit if hit is None else pc.or_(hit, url_hit)
            reasons = pc.if_else(pc.and_(hit, pc.is_null(reasons)), pa.scalar(request.name), reasons)
        return table, reasons


def apply_removals(source: DatasetVersion, target: DatasetVersion, requests: list[RemovalRequest]) -> dict:
    """Make `target` = `source` without the requested documents, then seal it.

    Shards with nothing to remove are listed by reference (no copy); the others are
    rewritten. Returns which shards changed and how many documents each lost."""
    manifest = source.manifest()
    if not manifest.sealed:
        raise StorageError(f"{source.uri} is not finished; apply removals to a sealed version")
    step = RemovalFilter(requests)
    changed: dict[str, int] = {}
    for unit, info in manifest.units.items():
        if target.has_unit(unit):
            continue
        entries = [s for s in manifest.shards if s["name"] in set(info["shards"])]
        tables = {s["name"]: read_parquet(source.store, s["uri"]) for s in entries}
        kept = {name: step(t) for name, t in tables.items()}
        if all(kept[n].num_rows == tables[n].num_rows for n in tables):
            target.commit_unit(unit, [ShardEntry(**s) for s in entries], counts=info["counts"], quarantine=info["quarantine"])
            continue
        removed = {name: tables[name].num_rows - t.num_rows for name, t in kept.items() if t.num_rows != tables[name].num_rows}
        changed.update(removed)
        with ShardWriter(target, unit, schema=next(iter(tables.values())).schema) as writer:
            for table in kept.values():
                writer.write(table)
            writer.commit(counts={**info["counts"], "removed": sum(removed.values())}, quarantine=info["quarantine"])
    record = {"from_version": source.version, "requests": [r.name for r in requests], "changed_shards": changed, "removed": sum(changed.values())}
    target.seal(extra={**manifest.extra, "removals": record}, config_hash_=manifest.config_hash)
    return record


def removal_version_id(source: Manifest, requests: list[RemovalRequest]) -> str:
    """Deterministic, so an interrupted application resumes into the same new version."""
    return hashlib.sha256(canonical_json({"from": source.version, "requests": [r.to_json() for r in requests]}).encode()).hexdigest()[:16]

