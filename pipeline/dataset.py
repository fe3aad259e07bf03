"""Versioned datasets on object storage: Parquet shards committed atomically through a
manifest log.

Layout of one dataset version::

    <dataset>/versions/<version>/data/<unit>-<part>.parquet        documents
    <dataset>/versions/<version>/quarantine/<unit>.parquet         records that were not documents
    <dataset>/versions/<version>/_manifest/<seq:08d>.json          manifest snapshots (the commit log)
    <dataset>/_sealed/<version>.json                               one per finished version

A *unit* is the work of one task (usually one input shard). Its data objects are written
first; then one new manifest snapshot that lists them is created with a conditional put
(If-None-Match), so a unit is visible completely or not at all, and concurrent writers never
overwrite each other's commits (the loser of a race re-reads and tries the next number).
Readers see only what the newest snapshot lists; a crash between data and manifest leaves
orphan objects that nobody reads (`orphans()` finds them). Data object names carry a
per-attempt token, so a late or repeated writer can never overwrite a committed object.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.schema import QUARANTINE_SCHEMA, SCHEMA_VERSION
from pipeline.settings import data_root
from pipeline.storage import ObjectStore, PreconditionFailed, StorageError, basename, is_s3, join

MANIFEST_FORMAT = "tokenmill.manifest/1"
DEFAULT_TARGET_BYTES = 128 * 1024 * 1024
ROW_GROUP_ROWS = 8192


def resolve_dataset_uri(name_or_uri: str) -> str:
    """A bare name means `$TOKENMILL_DATA_ROOT/datasets/<name>`; URIs and paths are taken as they are."""
    if is_s3(name_or_uri) or name_or_uri.startswith(("/", "file://", ".")):
        return name_or_uri.rstrip("/")
    return join(data_root(), "datasets", name_or_uri)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def config_hash(config: Any) -> str:
    """A short stable hash of a JSON-able configuration (feeds versions and cache keys)."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def make_version_id(inputs: Iterable[Any], config: Any, code_version: str) -> str:
    """Deterministic version id: the same inputs (URI + ETag + size), config and code give the
    same version, so a re-run after a crash resumes the same version instead of starting anew."""
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
    dataset: str
    version: str
    seq: int = 0
    schema_version: str = SCHEMA_VERSION
    config_hash: str = ""
    created_at: float = field(default_factory=time.time)
    sealed: bool = False
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
        body = {"format": MANIFEST_FORMAT, **self.__dict__, "rows": self.rows, "bytes": self.bytes}
        return json.dumps(body, indent=1, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Manifest":
        body = json.loads(text)
        if body.pop("format", None) != MANIFEST_FORMAT:
            raise StorageError("not a tokenmill manifest")
        body.pop("rows", None)
        body.pop("bytes", None)
        return cls(**body)


class DatasetVersion:
    """One version of a dataset: commit units of shards, read what is committed, seal."""

    def __init__(self, dataset_uri: str, version: str, store: ObjectStore | None = None):
        self.dataset_uri = dataset_uri.rstrip("/")
        self.version = version
        self.store = store or ObjectStore()
        self.uri = join(self.dataset_uri, "versions", version)

    def __repr__(self) -> str:
        return f"DatasetVersion({self.uri!r})"

    # -- manifest log ------------------------------------------------------------------

    def _manifest_uri(self, seq: int) -> str:
        return join(self.uri, "_manifest", f"{seq:08d}.json")

    def manifest(self) -> Manifest:
        """The newest committed snapshot (an empty manifest when nothing is committed yet)."""
        snapshots = [o for o in self.store.list(join(self.uri, "_manifest") + "/") if o.uri.endswith(".json")]
        if not snapshots:
            return Manifest(dataset=self.dataset_uri, version=self.version)
        return Manifest.from_json(self.store.get_bytes(snapshots[-1].uri))

    def _commit(self, mutate) -> Manifest:
        """Apply `mutate(manifest)` to the newest snapshot and create the next one, retrying races."""
        for _ in range(100):
            current = self.manifest()
            if current.sealed:
                raise StorageError(f"{self.uri} is sealed; commit to a new version")
            nxt = Manifest(**{**current.__dict__, "shards": list(current.shards), "units": dict(current.units), "extra": dict(current.extra)})
            if mutate(nxt) is False:
                return current
            nxt.seq = current.seq + 1
            nxt.created_at = time.time()
            try:
                self.store.put_bytes(self._manifest_uri(nxt.seq), nxt.to_json().encode(), if_none_match=True, content_type="application/json")
                return nxt
            except PreconditionFailed:
                continue  # another writer committed first: re-read and try the next number
        raise StorageError(f"could not commit to {self.uri}: too many concurrent writers")

    def has_unit(self, unit: str) -> bool:
        return unit in self.manifest().units

    def commit_unit(self, unit: str, shards: list[ShardEntry], *, counts: dict | None = None, quarantine: dict | None = None, config_hash_: str = "") -> Manifest:
        """Make a unit's shards visible at once. Idempotent: committing a unit twice keeps the first."""

        def mutate(m: Manifest):
            if unit in m.units:
                return False
            m.shards.extend(s.as_dict() for s in shards)
            m.units[unit] = {"shards": [s.name for s in shards], "counts": counts or {}, "quarantine": quarantine or {}}
            if config_hash_:
                m.config_hash = config_hash_
            return True

        return self._commit(mutate)

    def seal(self, *, extra: dict | None = None, config_hash_: str = "") -> Manifest:
        """Mark the version finished; later commits are refused and it appears in `versions()`."""

        def mutate(m: Manifest):
            if m.sealed:
                return False
            m.sealed = True
            m.extra.update(extra or {})
            if config_hash_:
                m.config_hash = config_hash_
            return True

        manifest = self._commit(mutate) if not self.manifest().sealed else self.manifest()
        try:
            self.store.put_bytes(
                join(self.dataset_uri, "_sealed", f"{self.version}.json"),
                canonical_json({"version": self.version, "seq": manifest.seq, "created_at": manifest.created_at, "rows": manifest.rows}).encode(),
                if_none_match=True,
            )
        except PreconditionFailed:
            pass
        return manifest

    # -- reading -----------------------------------------------------------------------

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

    def quarantine_uris(self) -> list[str]:
        return [u["quarantine"]["uri"] for u in self.manifest().units.values() if u.get("quarantine", {}).get("uri")]

    def verify(self) -> list[str]:
        """Check every committed shard's size and sha256; return the problems found."""
        problems = []
        for shard in self.manifest().shards:
            data = self.store.get_bytes(shard["uri"])
            if len(data) != shard["bytes"] or hashlib.sha256(data).hexdigest() != shard["sha256"]:
                problems.append(f"{shard['uri']}: checksum mismatch")
        return problems

    def orphans(self) -> list[str]:
        """Data objects under this version that no committed snapshot lists (crashed writers)."""
        listed = set(self.shard_uris()) | set(self.quarantine_uris())
        found = self.store.list(join(self.uri, "data") + "/") + self.store.list(join(self.uri, "quarantine") + "/")
        return [o.uri for o in found if o.uri not in listed]

    def delete_orphans(self) -> int:
        """Remove what crashed writers left behind. Only safe when no writer of this version is running."""
        orphans = self.orphans()
        for uri in orphans:
            self.store.delete(uri)
        return len(orphans)


def sealed_versions(dataset_uri: str, store: ObjectStore | None = None) -> list[dict]:
    """Finished versions of a dataset, oldest first."""
    store = store or ObjectStore()
    out = [json.loads(store.get_bytes(o.uri)) for o in store.list(join(dataset_uri, "_sealed") + "/") if o.uri.endswith(".json")]
    return sorted(out, key=lambda v: (v["created_at"], v["version"]))


def latest_version(dataset_uri: str, store: ObjectStore | None = None) -> DatasetVersion:
    store = store or ObjectStore()
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
    commits them in one manifest snapshot (`commit()`), data first and manifest last.

    Shard names are `<unit>-<part:05d>-<attempt>.parquet`. A unit that is already committed is
    not written again (`already_committed`; writes are ignored and `commit()` returns the
    manifest), so re-runs never duplicate or replace a committed row.
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
        self._attempt = uuid.uuid4().hex[:8]
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
        if self._writer is None:
            self._path = Path(self._tmpdir.name) / f"{self.unit}-{len(self.shards):05d}-{self._attempt}.parquet"
            self._writer = pq.ParquetWriter(self._path, self.schema, compression="zstd", compression_level=self.compression_level)
            self._rows = 0
        table = data if isinstance(data, pa.Table) else pa.Table.from_batches([data])
        self._writer.write_table(table.cast(self.schema) if table.schema != self.schema else table, row_group_size=ROW_GROUP_ROWS)
        self._rows += table.num_rows
        if os.path.getsize(self._path) >= self.target_bytes:
            self._finish_shard()

    def _finish_shard(self) -> None:
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

    def commit(self, *, counts: dict | None = None, quarantine: pa.Table | dict | None = None, config_hash_: str = "") -> Manifest:
        """Upload the last shard and the quarantine table, then commit the unit.

        `quarantine` is a QUARANTINE_SCHEMA table to store, or the manifest record of one
        stored already (carried over when a unit is rewritten into a new version)."""
        if self.already_committed:
            return self.version.manifest()
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
        return self.version.commit_unit(self.unit, self.shards, counts=counts, quarantine=qinfo, config_hash_=config_hash_)


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
