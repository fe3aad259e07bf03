"""Versioned datasets on object storage: Parquet shards committed unit by unit, sealed once.

Layout of one dataset::

    <dataset>/versions/<V>/data/<unit>-<part>-<attempt>.parquet   documents
    <dataset>/versions/<V>/quarantine/<unit>-<attempt>.parquet    records that were not documents
    <dataset>/versions/<V>/_commits/<unit>.json                   one commit record per unit (open versions)
    <dataset>/versions/<V>/_manifest.json                         the sealed manifest: every unit, compacted
    <dataset>/versions/<V>/_announced.json                        `dataset.ready` was sent for V
    <dataset>/_sealed/<V>.json                                    one marker per listed (finished) version
    <dataset>/_latest.json                                        the newest sealed version

A *unit* is the work of one task (usually one input object). Its data objects are written
first, then one small commit record created with If-None-Match: a commit costs the same
whatever the number of units already committed, a unit is visible completely or not at all,
and the first commit of a unit wins (a late or repeated writer changes nothing; its objects
are orphans). Data object names carry a per-attempt token, so nothing committed is ever
overwritten.

Sealing, in this order, each step idempotent:
  1. the sealed manifest is compacted from the commit records and created with If-None-Match:
     from then on it alone says what the version holds;
  2. objects under `data/` and `quarantine/` it does not list (crashed or losing attempts) are
     deleted, so a reader that globs `data/*.parquet` sees exactly the manifest's rows;
  3. the `_sealed` marker lists the version;
  4. the `latest` pointer moves forward (conditional write; never to an older version);
  5. the commit records, now redundant, are deleted.
`seal()` on a version whose sealed manifest exists runs steps 2–5 again: a crash anywhere in
the sequence converges on a re-run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import names
from pipeline.fingerprint import check_code, code_fingerprint
from pipeline.schema import QUARANTINE_SCHEMA, SCHEMA_VERSION
from pipeline.settings import data_root
from pipeline.storage import ObjectStore, PreconditionFailed, StorageError, basename, is_s3, join

MANIFEST_FORMAT = "tokenmill.manifest/2"
UNIT_FORMAT = "tokenmill.unit/1"
DEFAULT_TARGET_BYTES = 128 * 1024 * 1024
ROW_GROUP_ROWS = 8192
READ_THREADS = 16  # parallel GETs when compacting commit records


def resolve_dataset_uri(name_or_uri: str) -> str:
    """A bare name means `$TOKENMILL_DATA_ROOT/datasets/<name>` (validated: no `..`, no
    absolute parts); URIs and paths are taken as they are, but never with a `..` segment."""
    if is_s3(name_or_uri) or name_or_uri.startswith(("/", "file://", ".")):
        if ".." in name_or_uri.replace("://", "/").split("/") or name_or_uri.startswith(".."):
            raise names.InvalidName(f"dataset: {name_or_uri!r} must not contain a '..' segment")
        return name_or_uri.rstrip("/")
    return join(data_root(), "datasets", names.dataset_name(name_or_uri))


def parse_dataset_ref(ref: str) -> tuple[str, str | None]:
    """`DATASET[@VERSION]` → (dataset URI, version id or None); both validated."""
    dataset, sep, version = ref.rpartition("@") if "@" in ref.split("/")[-1] else (ref, "", "")
    return resolve_dataset_uri(dataset), (names.version_id(version) if sep else None)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def config_hash(config: Any) -> str:
    """A short stable hash of a JSON-able configuration (feeds versions and cache keys)."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def make_version_id(inputs: Iterable[Any], config: Any, code_version: str) -> str:
    """Deterministic version id: the same inputs (URI + ETag + size), config and code give the
    same version, so a re-run after a crash resumes the same version instead of starting anew.
    `code_version` should be `fingerprint.code_fingerprint()` (and `config` should carry the
    hashes of the files it names, `fingerprint.referenced_files`)."""
    digest = hashlib.sha256(canonical_json({"inputs": list(inputs), "config": config, "code": code_version}).encode())
    return digest.hexdigest()[:16]


@dataclass
class ShardEntry:
    name: str
    uri: str
    rows: int
    bytes: int
    sha256: str
    unit: str

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass
class Manifest:
    """What a version holds. Sealed: read from `_manifest.json`; open: compacted from the
    commit records on every call (O(units): call it once, not per task)."""

    dataset: str
    version: str
    seq: int = 0  # number of committed units
    schema_version: str = SCHEMA_VERSION
    config_hash: str = ""
    code: str = ""
    created_at: float = field(default_factory=time.time)
    sealed: bool = False
    sealed_at: float = 0.0
    shards: list[dict] = field(default_factory=list)
    units: dict[str, dict] = field(default_factory=dict)  # unit id -> {"shards": [...], "counts": {...}, "quarantine": {...}}
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(s["rows"] for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s["bytes"] for s in self.shards)

    def to_json(self) -> str:
        return canonical_json({"format": MANIFEST_FORMAT, **self.__dict__, "rows": self.rows, "bytes": self.bytes})

    @classmethod
    def from_json(cls, text: str | bytes) -> "Manifest":
        body = json.loads(text)
        if body.get("format") != MANIFEST_FORMAT:
            raise StorageError(f"not a tokenmill manifest ({body.get('format')!r}, expected {MANIFEST_FORMAT})")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in body.items() if k in known})


class DatasetVersion:
    """One version of a dataset: commit units of shards, read what is committed, seal.

    `code`, when given (a plan's code fingerprint), is the code every unit must be written
    by: a worker running anything else refuses before it writes (fingerprint.CodeMismatch)."""

    def __init__(self, dataset_uri: str, version: str, store: ObjectStore | None = None, *, code: str = ""):
        self.dataset_uri = dataset_uri.rstrip("/")
        self.version = version
        self.store = store or ObjectStore()
        self.code = code
        self.uri = join(self.dataset_uri, "versions", version)

    def __repr__(self) -> str:
        return f"DatasetVersion({self.uri!r})"

    # -- where things are ----------------------------------------------------------------

    def _commit_uri(self, unit: str) -> str:
        return join(self.uri, "_commits", f"{unit}.json")

    @property
    def manifest_uri(self) -> str:
        return join(self.uri, "_manifest.json")

    @property
    def marker_uri(self) -> str:
        return join(self.dataset_uri, "_sealed", f"{self.version}.json")

    @property
    def announced_uri(self) -> str:
        return join(self.uri, "_announced.json")

    # -- reading the commit state --------------------------------------------------------

    def sealed_manifest(self) -> Manifest | None:
        found = self.store.get_with_etag(self.manifest_uri)
        return Manifest.from_json(found[0]) if found else None

    def is_sealed(self) -> bool:
        return self.store.head(self.manifest_uri) is not None

    def manifest(self) -> Manifest:
        """The sealed manifest, or (open version) every unit committed so far."""
        return self.sealed_manifest() or self._compact()

    def _commit_records(self) -> list[dict]:
        listed = [o.uri for o in self.store.list(join(self.uri, "_commits") + "/") if o.uri.endswith(".json")]
        with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
            return [json.loads(b) for b in pool.map(self.store.get_bytes, listed)]

    def _compact(self) -> Manifest:
        manifest = Manifest(dataset=self.dataset_uri, version=self.version)
        for record in sorted(self._commit_records(), key=lambda r: r["unit"]):
            manifest.shards.extend(record["shards"])
            manifest.units[record["unit"]] = _unit_entry(record)
            manifest.created_at = min(manifest.created_at, record["committed_at"])
        codes = sorted({u["code"] for u in manifest.units.values() if u.get("code")})
        hashes = sorted({u["config_hash"] for u in manifest.units.values() if u.get("config_hash")})
        manifest.code = ",".join(codes)  # one value; several only where the version id does not cover the code
        manifest.config_hash = hashes[0] if len(hashes) == 1 else ""
        manifest.seq = len(manifest.units)
        return manifest

    def unit(self, unit: str) -> dict | None:
        """One unit's commit record (`shards` as entries, `counts`, `quarantine`), or None:
        one GET, whatever the number of units."""
        found = self.store.get_with_etag(self._commit_uri(unit))
        if found:
            return json.loads(found[0])
        sealed = self.sealed_manifest()
        if sealed is None or unit not in sealed.units:
            return None
        entry = sealed.units[unit]
        return {**entry, "unit": unit, "shards": [s for s in sealed.shards if s["unit"] == unit]}

    def has_unit(self, unit: str) -> bool:
        if self.store.head(self._commit_uri(unit)) is not None:
            return True
        sealed = self.sealed_manifest()
        return sealed is not None and unit in sealed.units

    # -- committing ----------------------------------------------------------------------

    def commit_unit(self, unit: str, shards: list[ShardEntry], *, counts: dict | None = None, quarantine: dict | None = None, config_hash_: str = "") -> dict:
        """Make a unit's shards visible at once: one conditional PUT of a small record.
        Idempotent: committing a unit twice keeps the first. Returns the unit's record."""
        if not unit or "/" in unit or unit in {".", ".."}:
            raise ValueError(f"a unit name is one path segment: {unit!r}")
        check_code(self.code, self.uri)
        if self.is_sealed():
            raise StorageError(f"{self.uri} is sealed; commit to a new version")
        record = {
            "format": UNIT_FORMAT,
            "unit": unit,
            "shards": [s.as_dict() for s in shards],
            "counts": counts or {},
            "quarantine": quarantine or {},
            "config_hash": config_hash_,
            "code": code_fingerprint(),
            "committed_at": time.time(),
        }
        try:
            self.store.put_bytes(self._commit_uri(unit), canonical_json(record).encode(), if_none_match=True, content_type="application/json")
        except PreconditionFailed:  # committed before (a retry or a racing attempt): the first stays
            first = self.unit(unit)
            if first is None:
                raise StorageError(f"{self.uri}: unit {unit} has a commit record that could not be read back") from None
            return first
        if self.is_sealed():
            # The seal compacted the records before this one landed: it is not part of the
            # version (and `unit()` must not report it), so it is withdrawn.
            self.store.delete(self._commit_uri(unit))
            first = self.unit(unit)
            if first is None:
                raise StorageError(f"{self.uri} was sealed while unit {unit} was being committed; commit to a new version")
            return first
        return record

    # -- sealing -------------------------------------------------------------------------

    def seal(self, *, extra: dict | None = None, config_hash_: str = "") -> Manifest:
        """Finish the version (steps 1–5 of the module docstring); later commits are refused.
        On a sealed version this completes an interrupted seal and returns its manifest."""
        sealed = self.sealed_manifest()
        if sealed is None:
            manifest = self._compact()
            manifest.sealed = True
            manifest.sealed_at = time.time()
            manifest.extra.update(extra or {})
            manifest.config_hash = config_hash_ or manifest.config_hash
            try:
                self.store.put_bytes(self.manifest_uri, manifest.to_json().encode(), if_none_match=True, content_type="application/json")
                sealed = manifest
            except PreconditionFailed:  # another writer sealed first: its manifest is the version
                sealed = self.sealed_manifest()
                assert sealed is not None
        return self.finish_seal(sealed)

    def finish_seal(self, manifest: Manifest) -> Manifest:
        """Steps 2–5 for a sealed manifest: idempotent, safe to repeat after any crash."""
        self.store.delete_many(self.orphans(manifest))
        marker = {"version": self.version, "seq": manifest.seq, "created_at": manifest.created_at, "sealed_at": manifest.sealed_at, "rows": manifest.rows}
        try:
            self.store.put_bytes(self.marker_uri, canonical_json(marker).encode(), if_none_match=True, content_type="application/json")
        except PreconditionFailed:
            pass
        advance_latest(self.dataset_uri, manifest, self.store)
        self.store.delete_prefix(join(self.uri, "_commits") + "/")
        return manifest

    def needs_announcing(self) -> bool:
        """True until `mark_announced`: the `dataset.ready` event goes out once per version."""
        return self.store.head(self.announced_uri) is None

    def mark_announced(self, event_id: str) -> None:
        try:
            self.store.put_bytes(self.announced_uri, canonical_json({"event_id": event_id, "at": time.time()}).encode(), if_none_match=True)
        except PreconditionFailed:
            pass

    # -- reading -------------------------------------------------------------------------

    def shard_uris(self) -> list[str]:
        return [s["uri"] for s in self.manifest().shards]

    def iter_batches(self, columns: list[str] | None = None, batch_size: int = ROW_GROUP_ROWS) -> Iterator[pa.RecordBatch]:
        for uri in self.shard_uris():
            yield from read_parquet_batches(self.store, uri, columns=columns, batch_size=batch_size)

    def read_table(self, columns: list[str] | None = None) -> pa.Table:
        tables = [read_parquet(self.store, uri, columns=columns) for uri in self.shard_uris()]
        if not tables:
            raise StorageError(f"{self.uri} has no committed shards")
        return pa.concat_tables(tables)

    def quarantine_uris(self, manifest: Manifest | None = None) -> list[str]:
        manifest = manifest or self.manifest()
        return [u["quarantine"]["uri"] for u in manifest.units.values() if u.get("quarantine", {}).get("uri")]

    def verify(self, *, checksums: bool = True) -> list[str]:
        """Problems with this version: shards missing or of the wrong size (with `checksums`,
        also the wrong sha256 or row count: every shard is read), objects under data/ or
        quarantine/ that the manifest does not list, a sealed version without its marker."""
        manifest = self.manifest()
        sizes = {o.uri: o.size for o in self.store.list(join(self.uri, "data") + "/")}
        problems = []
        for shard in manifest.shards:
            uri = shard["uri"]
            size = sizes[uri] if uri in sizes else getattr(self.store.head(uri), "size", None)  # shards shared from another version
            if size is None:
                problems.append(f"{uri}: missing")
            elif size != shard["bytes"]:
                problems.append(f"{uri}: {size} bytes, the manifest says {shard['bytes']}")
            elif checksums:
                data = self.store.get_bytes(uri)
                if hashlib.sha256(data).hexdigest() != shard["sha256"]:
                    problems.append(f"{uri}: checksum mismatch")
                elif pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows != shard["rows"]:
                    problems.append(f"{uri}: row count differs from the manifest's {shard['rows']}")
        problems += [f"{uri}: not in the manifest (orphan)" for uri in self.orphans(manifest)]
        if manifest.sealed and self.store.head(self.marker_uri) is None:
            problems.append(f"{self.uri}: sealed but not listed (no {self.marker_uri}); `tokenmill gc` or a re-run finishes the seal")
        return problems

    def orphans(self, manifest: Manifest | None = None) -> list[str]:
        """Objects under this version's data/ and quarantine/ that the manifest does not list
        (crashed or losing writers). On an open version, only meaningful while nobody writes."""
        manifest = manifest or self.manifest()
        listed = {s["uri"] for s in manifest.shards} | set(self.quarantine_uris(manifest))
        found = self.store.list(join(self.uri, "data") + "/") + self.store.list(join(self.uri, "quarantine") + "/")
        return [o.uri for o in found if o.uri not in listed]

    def delete_orphans(self) -> int:
        """Remove what crashed writers left behind. Only safe when no writer of this version is running."""
        return self.store.delete_many(self.orphans())


def _unit_entry(record: dict) -> dict:
    return {
        "shards": [s["name"] for s in record["shards"]],
        "counts": record.get("counts", {}),
        "quarantine": record.get("quarantine", {}),
        "config_hash": record.get("config_hash", ""),
        "code": record.get("code", ""),
    }


def latest_uri(dataset_uri: str) -> str:
    return join(dataset_uri, "_latest.json")


def advance_latest(dataset_uri: str, manifest: Manifest, store: ObjectStore) -> bool:
    """Point `latest` at this sealed version unless a version sealed later is there already.
    A compare-and-swap (If-Match on the pointer's ETag) with backoff on conflicts, so two
    seals racing and a late repair of an old seal never move `latest` backwards."""
    uri = latest_uri(dataset_uri)
    ours = {"version": manifest.version, "sealed_at": manifest.sealed_at, "rows": manifest.rows}
    body = canonical_json(ours).encode()
    for attempt in range(30):
        current = store.get_with_etag(uri)
        try:
            if current is None:
                # No pointer yet (a dataset sealed before pointers existed, whose readers took the
                # newest marker): the first pointer names the newest sealed version, which a
                # late repair of an old seal (gc) is not.
                newest = max([ours, *sealed_versions(dataset_uri, store)], key=lambda v: (v["sealed_at"], v["version"]))
                first = {k: newest[k] for k in ("version", "sealed_at", "rows")}
                store.put_bytes(uri, canonical_json(first).encode(), if_none_match=True, content_type="application/json")
                return newest["version"] == manifest.version
            pointed = json.loads(current[0])
            if (pointed["sealed_at"], pointed["version"]) >= (manifest.sealed_at, manifest.version):
                return False
            store.put_bytes(uri, body, if_match=current[1], content_type="application/json")
            return True
        except PreconditionFailed:
            time.sleep(min(2.0, 0.02 * 2**attempt) * (0.5 + random.random()))
    raise StorageError(f"could not update {uri}: too many concurrent writers")


def sealed_versions(dataset_uri: str, store: ObjectStore | None = None) -> list[dict]:
    """Finished versions of a dataset, oldest first (by the time each was sealed)."""
    store = store or ObjectStore()
    listed = [o.uri for o in store.list(join(dataset_uri, "_sealed") + "/") if o.uri.endswith(".json")]
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        out = [json.loads(b) for b in pool.map(store.get_bytes, listed)]
    return sorted(out, key=lambda v: (v.get("sealed_at", v["created_at"]), v["version"]))


def latest_version(dataset_uri: str, store: ObjectStore | None = None) -> DatasetVersion:
    """The version the `latest` pointer names (one GET). A dataset sealed before pointers
    existed falls back to its newest `_sealed` marker."""
    store = store or ObjectStore()
    found = store.get_with_etag(latest_uri(dataset_uri))
    if found is not None:
        return DatasetVersion(dataset_uri, json.loads(found[0])["version"], store)
    versions = sealed_versions(dataset_uri, store)
    if not versions:
        raise StorageError(f"dataset {dataset_uri} has no finished version")
    return DatasetVersion(dataset_uri, versions[-1]["version"], store)


def read_parquet(store: ObjectStore, uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = store.arrow_filesystem(uri)
    return pq.read_table(path, filesystem=fs, columns=columns)


def read_parquet_batches(store: ObjectStore, uri: str, columns: list[str] | None = None, batch_size: int = ROW_GROUP_ROWS) -> Iterator[pa.RecordBatch]:
    with store.open_random_access(uri) as fh:
        yield from pq.ParquetFile(fh).iter_batches(batch_size=batch_size, columns=columns)


class ShardWriter:
    """Writes one unit's record batches as zstd Parquet shards of about `target_bytes`, then
    commits them with one commit record (`commit()`), data first and record last.

    Shard names are `<unit>-<part:05d>-<attempt>.parquet`. A unit that is already committed is
    not written again (`already_committed`; writes are ignored and `commit()` returns the
    first commit record), so re-runs never duplicate or replace a committed row.
    """

    def __init__(self, version: DatasetVersion, unit: str, *, schema: pa.Schema, target_bytes: int = DEFAULT_TARGET_BYTES, compression_level: int = 3):
        if "/" in unit:
            raise ValueError(f"unit names must not contain '/': {unit!r}")
        self.version = version
        self.unit = unit
        self.schema = schema
        self.target_bytes = target_bytes
        self.compression_level = compression_level
        self.shards: list[ShardEntry] = []
        self._tmpdir = tempfile.TemporaryDirectory(prefix="tokenmill-shard-")
        self._writer: pq.ParquetWriter | None = None
        self._path: Path | None = None
        self._rows = 0
        # Rows held back until a full row group: callers write filtered batches (a few hundred
        # rows each after heavy dedup), and one write_table call is one row group.
        self._pending: list[pa.Table] = []
        self._pending_rows = self._pending_bytes = 0
        self._attempt = uuid.uuid4().hex[:8]
        check_code(version.code, version.uri)
        self.already_committed = version.has_unit(unit)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._writer is not None:
            self._writer.close()
        self._tmpdir.cleanup()

    def write(self, data: pa.RecordBatch | pa.Table) -> None:
        if data.num_rows == 0 or self.already_committed:
            return
        table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
        self._pending.append(table.cast(self.schema) if table.schema != self.schema else table)
        self._pending_rows += table.num_rows
        self._pending_bytes += table.nbytes
        # A full row group, or (large documents) as many bytes as a shard holds: shards still
        # roll at about target_bytes.
        if self._pending_rows >= ROW_GROUP_ROWS or self._pending_bytes >= self.target_bytes:
            self._flush(whole_groups_only=self._pending_bytes < self.target_bytes)
            if self._path is not None and os.path.getsize(self._path) >= self.target_bytes:
                self._finish_shard()

    def _flush(self, *, whole_groups_only: bool = False) -> None:
        """Write the rows held back as row groups of ROW_GROUP_ROWS; the remainder waits for
        more rows unless the shard is being finished (then it is its last, smaller group)."""
        rows = (self._pending_rows // ROW_GROUP_ROWS) * ROW_GROUP_ROWS if whole_groups_only else self._pending_rows
        if rows == 0:
            return
        if self._writer is None:
            self._path = Path(self._tmpdir.name) / f"{self.unit}-{len(self.shards):05d}-{self._attempt}.parquet"
            self._writer = pq.ParquetWriter(self._path, self.schema, compression="zstd", compression_level=self.compression_level)
            self._rows = 0
        pending = pa.concat_tables(self._pending)
        self._writer.write_table(pending.slice(0, rows), row_group_size=ROW_GROUP_ROWS)
        self._rows += rows
        rest = pending.slice(rows)
        self._pending, self._pending_rows, self._pending_bytes = ([rest] if rest.num_rows else []), rest.num_rows, rest.nbytes if rest.num_rows else 0

    def _finish_shard(self) -> None:
        self._flush()
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        assert self._path is not None
        sha = hashlib.sha256()
        with open(self._path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                sha.update(chunk)
        uri = join(self.version.uri, "data", self._path.name)
        info = self.version.store.upload_file(self._path, uri)
        self.shards.append(ShardEntry(self._path.name, uri, self._rows, info.size, sha.hexdigest(), self.unit))
        self._path.unlink()

    def commit(self, *, counts: dict | None = None, quarantine: pa.Table | dict | None = None, config_hash_: str = "") -> dict:
        """Upload the last shard and the quarantine table, then commit the unit; returns the
        unit's commit record (the first one, when the unit was committed before).

        `quarantine` is a QUARANTINE_SCHEMA table to store, or the manifest record of one
        stored already (carried over when a unit is rewritten into a new version)."""
        if self.already_committed:
            record = self.version.unit(self.unit)
            assert record is not None
            return record
        self._finish_shard()
        qinfo: dict = quarantine if isinstance(quarantine, dict) else {}
        if isinstance(quarantine, pa.Table) and quarantine.num_rows:
            qpath = Path(self._tmpdir.name) / f"{self.unit}.quarantine.parquet"
            pq.write_table(quarantine.cast(QUARANTINE_SCHEMA), qpath, compression="zstd")
            quri = join(self.version.uri, "quarantine", f"{self.unit}-{self._attempt}.parquet")
            self.version.store.upload_file(qpath, quri)
            reasons: dict[str, int] = {}
            for reason in quarantine.column("reason").to_pylist():
                reasons[reason] = reasons.get(reason, 0) + 1
            qinfo = {"uri": quri, "rows": quarantine.num_rows, "reasons": reasons}
        uploaded = [s.uri for s in self.shards] + ([qinfo["uri"]] if isinstance(quarantine, pa.Table) and quarantine.num_rows else [])
        try:
            record = self.version.commit_unit(self.unit, self.shards, counts=counts, quarantine=qinfo, config_hash_=config_hash_)
        except Exception:
            self._discard(uploaded)
            raise
        if [s["uri"] for s in record["shards"]] != [s.uri for s in self.shards]:
            self._discard(uploaded)  # a racing attempt committed first: its objects stand, these go
        return record

    def _discard(self, uris: list[str]) -> None:
        """Delete what this attempt uploaded but did not commit, so a reader that globs
        data/*.parquet never sees its rows (the seal's orphan sweep is the backstop for a crash)."""
        for uri in uris:
            self.version.store.delete(uri)


# What ShardWriter appends to a unit name: `-<hash8>` (unit) `-<part>-<attempt>` (shard).
_DERIVED_SUFFIX = re.compile(r"(-[0-9a-f]{8})?-\d{5}-[0-9a-f]{8}\.parquet$")


def write_sealed(version: DatasetVersion, table: pa.Table, rows_per_unit: int) -> Manifest:
    """Commit `table` as units of `rows_per_unit` rows (`part000`, `part001`, …) and seal the
    version: a small dataset made in one go (tests, benchmarks, imports of prepared data)."""
    for start in range(0, table.num_rows, rows_per_unit):
        part = table.slice(start, rows_per_unit)
        with ShardWriter(version, f"part{start // rows_per_unit:03d}", schema=table.schema) as writer:
            writer.write(part)
            writer.commit(counts={"docs": part.num_rows})
    return version.seal()


def unit_name(source_uri: str) -> str:
    """A unit id for an input object: its base name made safe (without the suffixes an
    earlier stage's shard names carry, so names do not grow stage by stage), plus a short
    hash of the full URI so that two inputs never collide."""
    stem = _DERIVED_SUFFIX.sub("", basename(source_uri))
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)[:80]
    return f"{safe}-{hashlib.sha256(source_uri.encode()).hexdigest()[:8]}"
