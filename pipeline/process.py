"""One input object → one committed unit of a dataset version.

The unit of work of both the `ingest` and the `corpus_refresh` flows: read a source object
(WARC, WET, JSONL, Parquet), optionally run a chain of steps over each batch, write Parquet
shards and the quarantine table, and commit them with one commit record. Plain Python:
a Prefect task, a Dask worker or a test calls it the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.card import add_counts, length_histogram
from pipeline.dataset import DEFAULT_TARGET_BYTES, DatasetVersion, ShardWriter, unit_name
from pipeline.readers import detect_format, open_reader
from pipeline.schema import DOCUMENT_SCHEMA, conform
from collections import Counter

from pipeline.steps.base import Chain, dropped_by_rule
from pipeline.storage import ObjectInfo, StorageError


class EmptyOutputError(StorageError):
    """A unit produced no documents and no quarantine rows from a non-empty input."""


def select_sources(objects: list[ObjectInfo], fmt: str | None = None) -> tuple[list[ObjectInfo], list[dict]]:
    """Split listed objects into those to read and those skipped, each skip with a reason:
    `folder_marker` (a key ending in "/", as consoles create) and, unless a format is forced,
    `unknown_format` (a name of no input format: `_SUCCESS`, README, checksums). A scheduled
    read of `raw/**` must not fail on such neighbours, nor pass over them without saying so."""
    readable, skipped = [], []
    for obj in objects:
        if obj.uri.endswith("/"):
            skipped.append({"source": obj.uri, "bytes": obj.size, "reason": "folder_marker", "detail": "a folder marker, not a file"})
            continue
        if fmt is None:
            try:
                detect_format(obj.uri)
            except ValueError as exc:
                skipped.append({"source": obj.uri, "bytes": obj.size, "reason": "unknown_format", "detail": str(exc).split(";")[0]})
                continue
        readable.append(obj)
    return readable, skipped


@dataclass(frozen=True)
class ReadOptions:
    fmt: str | None = None
    batch_size: int = 1000
    max_doc_bytes: int = 5_000_000


def process_source(
    source: ObjectInfo,
    version: DatasetVersion,
    *,
    chain_factory: Callable[[], Chain] | None = None,
    read: ReadOptions = ReadOptions(),
    target_bytes: int = DEFAULT_TARGET_BYTES,
    config_hash_: str = "",
) -> dict:
    """Read `source` into `version` as one unit; returns the unit's counts.

    Idempotent: when the unit is already committed, nothing is read and the committed
    counts are returned with `"skipped": True`.
    """
    unit = unit_name(source.uri)
    committed = version.unit(unit)  # one GET, however many units the version has
    if committed is not None:
        return {**committed["counts"], "unit": unit, "skipped": True}
    started = time.perf_counter()
    chain = chain_factory() if chain_factory else None
    # If-Match on the planned ETag: a version labelled with one content never holds another
    pinned = version.store.pinned({source.uri: source.etag})
    reader = open_reader(source.uri, store=pinned, fmt=read.fmt, batch_size=read.batch_size, max_doc_bytes=read.max_doc_bytes)
    out_schema: pa.Schema | None = None
    documents_out = text_bytes_out = 0
    lengths_in = lengths_out = None  # document-length histograms before/after the steps (dataset card)
    with ShardWriter(version, unit, schema=DOCUMENT_SCHEMA, target_bytes=target_bytes) as writer:
        for table in reader:
            lengths_in = add_counts(lengths_in, length_histogram(table.column("text")))
            if chain is not None:
                table = conform(chain(table))
            if table.num_rows == 0:
                continue
            lengths_out = add_counts(lengths_out, length_histogram(table.column("text")))
            text_bytes_out += pc.sum(pc.binary_length(table.column("text"))).as_py() or 0
            if out_schema is None:
                out_schema = table.schema
                writer.schema = out_schema  # score columns added by steps are kept
            writer.write(table.select(out_schema.names).cast(out_schema))
            documents_out += table.num_rows
        quarantine = reader.quarantine_table()
        if chain is not None:  # documents a step gave up on (CPU budget spent: reason `timeout`)
            quarantine = pa.concat_tables([quarantine, chain.quarantine_table()])
        counts = {
            "source": source.uri,
            "source_bytes": source.size,
            "reader": reader.stats,
            "steps": [s.as_dict() for s in chain.stats()] if chain else [],
            "documents_out": documents_out,
            "text_bytes_out": text_bytes_out,
            "length_hist": {"before": lengths_in or [], "after": lengths_out or []},
            "quarantined": sum(reader.stats["quarantined"].values()),
            "seconds": round(time.perf_counter() - started, 3),
        }
        nothing_accounted = not (reader.stats.get("documents") or quarantine.num_rows or any(reader.stats.get("skipped", {}).values()))
        if source.size > 0 and nothing_accounted:
            raise EmptyOutputError(f"{source.uri}: {source.size} bytes of input gave no document, no quarantine record and no skipped record")
        writer.commit(counts=counts, quarantine=quarantine, config_hash_=config_hash_)
    return {**counts, "unit": unit, "skipped": False}


def totals(results: list[dict]) -> dict:
    """What a set of `process_source` results read, kept, quarantined and dropped (by rule)."""
    quarantined: Counter = Counter()
    dropped: Counter = Counter()
    for r in results:
        quarantined.update(r["reader"].get("quarantined", {}))
        dropped.update(dropped_by_rule(r["steps"]))
    return {
        "read": sum(r["reader"].get("documents", 0) for r in results),
        "kept": sum(r["documents_out"] for r in results),
        "quarantined": dict(sorted(quarantined.items())),
        "dropped": dict(sorted(dropped.items())),
    }
