"""Removal requests (privacy law, takedowns): documents that must leave a dataset and stay out
of every later version.

The removal log of a dataset::

    <dataset>/_removals/requests/<name>.json    a request, written once (If-None-Match)
    <dataset>/_removals/withdrawn/<name>.json   its withdrawal, if it was withdrawn
    <dataset>/_removals/sets/<digest>.parquet   a compiled set of effective requests

A request names document ids, exact URLs and, only when asked, URL globs. URLs are compared
after normalisation (scheme and host case, http/https, default port, trailing slash,
fragment), and in exact URLs every character is literal (`?` starts a query, it is never a
wildcard). In globs `*` is the only wildcard and spans `/`.

Matching is a hash join: ids and normalised URLs are looked up in hash sets built once per
set (`pyarrow.compute.index_in`), so a million requested ids or URLs cost one hash-table
build per unit, not one regular expression. Globs are compiled into bounded RE2
alternations applied only to documents whose host some glob names.

Requests carry personal data (URLs, reasons with e-mail addresses): flows pass the URI and
digest of a compiled set, never the requests themselves.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import names
from pipeline.dataset import DatasetVersion, Manifest, ShardEntry, ShardWriter, canonical_json, read_parquet
from pipeline.steps.base import Step
from pipeline.storage import ObjectStore, PreconditionFailed, StorageError, join

GLOB_CHUNK_CHARS = 20_000  # RE2 program size stays far below its memory limit per alternation
SET_SCHEMA = pa.schema([("kind", pa.string()), ("key", pa.string()), ("request", pa.string())])

_URL_PARTS = r"^(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):)?//(?:[^/?#@]*@)?(?P<host>[^/?#:]*)(?::(?P<port>[0-9]*))?(?P<path>[^?#]*)(?P<query>\?[^#]*)?"


@dataclass(frozen=True)
class RemovalRequest:
    name: str
    doc_ids: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()  # exact, compared normalised
    url_globs: tuple[str, ...] = ()  # `*` wildcards (`https://example.com/users/*`)
    reason: str = ""

    def __post_init__(self) -> None:
        names.segment(self.name, "removal request name")
        if not (self.doc_ids or self.urls or self.url_globs):
            raise ValueError(f"removal request {self.name!r} names no document id, no URL and no URL glob")
        if any("*" not in g for g in self.url_globs):
            raise ValueError(f"removal request {self.name!r}: a URL glob without '*' is an exact URL; list it under urls")

    @classmethod
    def from_json(cls, text: str | bytes) -> "RemovalRequest":
        """Also reads the first format's `url_patterns`: entries with `*` become globs, the
        others exact URLs (`?` was a wildcard there; literal is what a takedown means)."""
        body = json.loads(text)
        legacy = body.get("url_patterns", ())
        return cls(
            body["name"],
            tuple(body.get("doc_ids", ())),
            tuple(body.get("urls", ())) + tuple(p for p in legacy if "*" not in p),
            tuple(body.get("url_globs", ())) + tuple(p for p in legacy if "*" in p),
            body.get("reason", ""),
        )

    def to_json(self) -> str:
        return canonical_json({"name": self.name, "doc_ids": list(self.doc_ids), "urls": list(self.urls), "url_globs": list(self.url_globs), "reason": self.reason})

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def _request_uri(dataset_uri: str, name: str) -> str:
    return join(dataset_uri, "_removals", "requests", f"{names.segment(name, 'removal request name')}.json")


def _withdrawn_uri(dataset_uri: str, name: str) -> str:
    return join(dataset_uri, "_removals", "withdrawn", f"{names.segment(name, 'removal request name')}.json")


def register_request(dataset_uri: str, request: RemovalRequest, store: ObjectStore | None = None) -> str:
    """Record a request with the dataset (once; a different request under the same name is refused)."""
    store = store or ObjectStore()
    uri = _request_uri(dataset_uri, request.name)
    try:
        store.put_bytes(uri, request.to_json().encode(), if_none_match=True, content_type="application/json")
    except PreconditionFailed:
        if RemovalRequest.from_json(store.get_bytes(uri)) != request:
            raise StorageError(f"a different removal request named {request.name!r} is already registered") from None
    return uri


def withdraw_request(dataset_uri: str, name: str, reason: str = "", store: ObjectStore | None = None) -> str:
    """Withdraw a request: later refreshes no longer apply it. The request itself stays in the
    log (what was asked and when it was withdrawn are both on record); its name is not reusable."""
    store = store or ObjectStore()
    if store.head(_request_uri(dataset_uri, name)) is None:
        raise StorageError(f"no removal request named {name!r} in {dataset_uri}")
    uri = _withdrawn_uri(dataset_uri, name)
    try:
        store.put_bytes(uri, canonical_json({"name": name, "withdrawn_at": time.time(), "reason": reason}).encode(), if_none_match=True)
    except PreconditionFailed:
        pass  # withdrawn before
    return uri


def effective_requests(dataset_uri: str, store: ObjectStore | None = None) -> list[RemovalRequest]:
    """Registered and not withdrawn, by name."""
    store = store or ObjectStore()
    withdrawn = {o.uri.rsplit("/", 1)[-1][: -len(".json")] for o in store.list(join(dataset_uri, "_removals", "withdrawn") + "/")}
    listed = [o.uri for o in store.list(join(dataset_uri, "_removals", "requests") + "/") if o.uri.endswith(".json")]
    with ThreadPoolExecutor(max_workers=16) as pool:
        requests = [RemovalRequest.from_json(b) for b in pool.map(store.get_bytes, listed)]
    return sorted((r for r in requests if r.name not in withdrawn), key=lambda r: r.name)


# -- URL normalisation (vectorised) -------------------------------------------------------------


def url_keys(urls: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """(comparison key, host) per URL, computed column-wise: host lowercased and without a
    trailing dot, scheme dropped (http and https name the same page for a takedown), default
    port dropped, fragment dropped, an empty path as `/`, trailing slashes of the path
    dropped. A value that is not a URL with `//` is kept as it is; null stays null."""
    parts = pc.extract_regex(urls, _URL_PARTS)
    scheme = pc.utf8_lower(pc.struct_field(parts, "scheme"))
    host = pc.utf8_rtrim(pc.utf8_lower(pc.struct_field(parts, "host")), characters=".")
    port = pc.struct_field(parts, "port")
    default_port = pc.or_(
        pc.equal(port, ""),
        pc.or_(pc.and_(pc.equal(scheme, "http"), pc.equal(port, "80")), pc.and_(pc.equal(scheme, "https"), pc.equal(port, "443"))),
    )
    port_part = pc.if_else(default_port, "", pc.binary_join_element_wise(":", port, ""))
    path = pc.utf8_rtrim(pc.struct_field(parts, "path"), characters="/")
    path = pc.if_else(pc.equal(path, ""), "/", path)
    key = pc.binary_join_element_wise(host, port_part, path, pc.struct_field(parts, "query"), "")
    return pc.coalesce(key, urls), host


def _normalised(values: list[str]) -> list[str]:
    with_slashes = [v if "//" in v else f"//{v}" for v in values]
    return url_keys(pa.array(with_slashes, pa.string()))[0].to_pylist()


def _glob_regex(key: str) -> str:
    return "^" + ".*".join(re.escape(part) for part in key.split("*")) + "$"


def _glob_matches(parts: tuple[str, ...], key: str) -> bool:
    """`key` matches the glob split at its `*`s: a prefix, a suffix and the parts between in
    order (string searches, no regular expression to compile per glob)."""
    first, *middle, last = parts
    if len(key) < len(first) + len(last) or not key.startswith(first) or not key.endswith(last):
        return False
    at, end = len(first), len(key) - len(last)
    for part in middle:
        found = key.find(part, at, end)
        if found < 0:
            return False
        at = found + len(part)
    return True


# -- compiled sets ------------------------------------------------------------------------------


class RemovalSet:
    """The effective requests of a dataset as hash sets (ids, URL keys) and glob alternations."""

    def __init__(self, table: pa.Table, digest: str, names_: tuple[str, ...]):
        self.digest = digest
        self.names = names_
        kinds = table.column("kind")
        ids = table.filter(pc.equal(kinds, "id"))
        urls = table.filter(pc.equal(kinds, "url"))
        globs = table.filter(pc.equal(kinds, "glob"))
        self._ids, self._id_requests = ids.column("key").combine_chunks(), ids.column("request").combine_chunks()
        self._urls, self._url_requests = urls.column("key").combine_chunks(), urls.column("request").combine_chunks()
        self._globs: dict[str, list[tuple[tuple[str, ...], str]]] = {}  # host ('' = a wildcard host) -> (parts between `*`s, request)
        for key, request in zip(globs.column("key").to_pylist(), globs.column("request").to_pylist()):
            host = key.split("/", 1)[0].split(":", 1)[0]
            self._globs.setdefault("" if "*" in host else host, []).append((tuple(key.split("*")), request))
        self._glob_hosts = pa.array([h for h in self._globs if h], pa.string())
        self._host_chunks = _alternations([_glob_regex("*".join(p)) for h, ps in self._globs.items() if h for p, _ in ps])
        self._wild_chunks = _alternations([_glob_regex("*".join(p)) for p, _ in self._globs.get("", [])])

    def __len__(self) -> int:
        return len(self._ids) + len(self._urls) + sum(len(v) for v in self._globs.values())

    @classmethod
    def from_requests(cls, requests: list[RemovalRequest]) -> "RemovalSet":
        return cls(compile_requests(requests), set_digest(requests), tuple(r.name for r in requests))

    def match(self, table: pa.Table) -> pa.Array:
        """The name of the request that removes each row (null: keep), from the `id` and `url` columns."""
        n = table.num_rows
        reasons = pa.nulls(n, pa.string())
        if n == 0 or len(self) == 0:
            return reasons
        if len(self._ids):
            reasons = pc.take(self._id_requests, pc.index_in(table.column("id"), value_set=self._ids))
        if not (len(self._urls) or self._globs):
            return reasons.combine_chunks() if isinstance(reasons, pa.ChunkedArray) else reasons
        keys, hosts = url_keys(table.column("url"))
        if len(self._urls):
            reasons = pc.coalesce(reasons, pc.take(self._url_requests, pc.index_in(keys, value_set=self._urls)))
        if self._globs:
            reasons = pc.coalesce(reasons, self._glob_reasons(keys, hosts))
        return reasons.combine_chunks() if isinstance(reasons, pa.ChunkedArray) else reasons

    def _glob_reasons(self, keys, hosts) -> pa.Array:
        """Globs run only on rows whose host a glob names (plus wildcard-host globs on all)."""
        keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
        hosts = hosts.combine_chunks() if isinstance(hosts, pa.ChunkedArray) else hosts
        hit = np.zeros(len(keys), dtype=bool)
        rows = pc.indices_nonzero(pc.fill_null(pc.is_in(hosts, value_set=self._glob_hosts), False)) if self._host_chunks else pa.array([], pa.uint64())
        for chunks, where in ((self._host_chunks, rows), (self._wild_chunks, None)):
            subset = keys if where is None else keys.take(where)
            for chunk in chunks if len(subset) else ():
                matched = pc.fill_null(pc.match_substring_regex(subset, chunk), False).to_numpy(zero_copy_only=False)
                hit[matched.nonzero()[0] if where is None else where.to_numpy()[matched]] = True
        named = []
        for i in hit.nonzero()[0].tolist():  # hits are few: name the request in Python
            key, host = keys[i].as_py(), hosts[i].as_py()
            named.append(next(request for parts, request in self._globs.get(host, []) + self._globs.get("", []) if _glob_matches(parts, key)))
        return pc.replace_with_mask(pa.nulls(len(keys), pa.string()), pa.array(hit), pa.array(named, pa.string()))

    # -- storage ------------------------------------------------------------------------------

    def save(self, dataset_uri: str, requests: list[RemovalRequest], store: ObjectStore) -> str:
        """Write the compiled set once (its name is its digest); returns its URI."""
        uri = set_uri(dataset_uri, self.digest)
        if store.head(uri) is None:
            sink = pa.BufferOutputStream()
            table = compile_requests(requests).replace_schema_metadata({"tokenmill.removal_names": canonical_json(list(self.names))})
            pq.write_table(table, sink, compression="zstd")
            store.put_bytes(uri, sink.getvalue().to_pybytes())
        return uri


def set_uri(dataset_uri: str, digest: str) -> str:
    return join(dataset_uri, "_removals", "sets", f"{digest}.parquet")


def set_digest(requests: list[RemovalRequest]) -> str:
    return hashlib.sha256(canonical_json(sorted((r.name, r.digest) for r in requests)).encode()).hexdigest()[:16]


def compile_requests(requests: list[RemovalRequest]) -> pa.Table:
    """One row per (kind, key): the first request (by name) naming a key is the one reported."""
    rows: dict[tuple[str, str], str] = {}
    for request in sorted(requests, key=lambda r: r.name):
        for kind, keys in (("id", request.doc_ids), ("url", _normalised(list(request.urls))), ("glob", _normalised(list(request.url_globs)))):
            for key in keys:
                rows.setdefault((kind, key), request.name)
    return pa.table(
        {"kind": [k for k, _ in rows], "key": [key for _, key in rows], "request": list(rows.values())},
        schema=SET_SCHEMA,
    )


@functools.lru_cache(maxsize=4)
def load_set(uri: str, digest: str, settings) -> RemovalSet:
    """A compiled set, read once per process (tasks of one refresh share it)."""
    store = ObjectStore(settings)
    table = pq.read_table(pa.BufferReader(store.get_bytes(uri)))
    names_ = tuple(json.loads((table.schema.metadata or {}).get(b"tokenmill.removal_names", b"[]")))
    return RemovalSet(table.replace_schema_metadata(None), digest, names_)


def _alternations(patterns: list[str]) -> list[str]:
    """Patterns joined into alternations of at most GLOB_CHUNK_CHARS characters each."""
    chunks, current, size = [], [], 0
    for pattern in patterns:
        if current and size + len(pattern) > GLOB_CHUNK_CHARS:
            chunks.append("|".join(current))
            current, size = [], 0
        current.append(f"(?:{pattern})")
        size += len(pattern) + 5
    if current:
        chunks.append("|".join(current))
    return chunks


# -- applying -----------------------------------------------------------------------------------


class RemovalFilter(Step):
    """Drops documents named by removal requests; the drop reason names the request."""

    name = "removal"

    def __init__(self, removal_set: RemovalSet):
        super().__init__()
        self.removal_set = removal_set

    def annotate(self, table: pa.Table) -> tuple[pa.Table, pa.Array | None]:
        return table, self.removal_set.match(table)


def apply_removals(source: DatasetVersion, target: DatasetVersion, requests: list[RemovalRequest]) -> dict:
    """Make `target` = `source` without the requested documents, then seal it.

    Only the `id` and `url` columns are read to find what to remove; shards with nothing to
    remove are listed by reference (no copy), the others rewritten. Returns which shards
    changed and how many documents each lost."""
    manifest = source.manifest()
    if not manifest.sealed:
        raise StorageError(f"{source.uri} is not finished; apply removals to a sealed version")
    removal_set = RemovalSet.from_requests(requests)
    changed: dict[str, int] = {}
    for unit, info in manifest.units.items():
        entries = [s for s in manifest.shards if s["unit"] == unit]
        hits = {s["name"]: pc.sum(pc.is_valid(removal_set.match(read_parquet(source.store, s["uri"], columns=["id", "url"])))).as_py() or 0 for s in entries}
        changed.update({name: n for name, n in hits.items() if n})
        if target.has_unit(unit):
            continue
        if not any(hits.values()):
            target.commit_unit(unit, [ShardEntry(**s) for s in entries], counts=info["counts"], quarantine=info["quarantine"])
            continue
        step = RemovalFilter(removal_set)
        with ShardWriter(target, unit, schema=read_parquet(source.store, entries[0]["uri"]).schema) as writer:
            for shard in entries:
                writer.write(step(read_parquet(source.store, shard["uri"])))
            writer.commit(counts={**info["counts"], "removed": sum(hits.values())}, quarantine=info["quarantine"])
    record = {"from_version": source.version, "requests": [r.name for r in requests], "changed_shards": changed, "removed": sum(changed.values())}
    target.seal(extra={**manifest.extra, "removals": record}, config_hash_=manifest.config_hash)
    return record


def removal_version_id(source: Manifest, requests: list[RemovalRequest]) -> str:
    """Deterministic, so an interrupted application resumes into the same new version."""
    return hashlib.sha256(canonical_json({"from": source.version, "requests": [r.to_json() for r in requests]}).encode()).hexdigest()[:16]
