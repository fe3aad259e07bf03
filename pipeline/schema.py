"""The document schema every reader produces and every step consumes, and the quarantine
schema for records that could not become documents.

Versioned: a change to either schema bumps SCHEMA_VERSION, which manifests record.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

import pyarrow as pa

SCHEMA_VERSION = "1"

DOCUMENT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # stable across runs: derived from source + offset or record id
        pa.field("text", pa.large_string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("source", pa.string(), nullable=False),  # URI of the input object it came from
        pa.field("crawl_timestamp", pa.timestamp("ms", tz="UTC")),
        pa.field("language", pa.string()),
        pa.field("language_score", pa.float32()),
        pa.field("license", pa.string()),  # licence of the text, where the source states one
        pa.field("provenance", pa.string()),  # reader and record locator, e.g. "warc:<record-id>@<offset>"
        pa.field("metadata", pa.string()),  # free-form JSON object
    ],
    metadata={"tokenmill.schema": "document", "tokenmill.schema_version": SCHEMA_VERSION},
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("offset", pa.int64()),  # byte offset (WARC/WET/JSONL) or row index (Parquet) in the source
        pa.field("reason", pa.string(), nullable=False),  # a short machine-countable code, e.g. "invalid_utf8"
        pa.field("detail", pa.string()),  # a human sentence: what exactly was wrong
        pa.field("record_id", pa.string()),
        pa.field("snippet", pa.binary()),  # the first bytes of the bad record, for inspection
    ],
    metadata={"tokenmill.schema": "quarantine", "tokenmill.schema_version": SCHEMA_VERSION},
)

SNIPPET_BYTES = 256


def documents_from_pylist(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Build a document table from dicts; `metadata` may be a dict (it is JSON-encoded)."""
    prepared = []
    for row in rows:
        row = dict(row)
        meta = row.get("metadata")
        if meta is not None and not isinstance(meta, str):
            row["metadata"] = json.dumps(meta, ensure_ascii=False, sort_keys=True)
        prepared.append(row)
    return pa.Table.from_pylist(prepared, schema=DOCUMENT_SCHEMA)


def quarantine_row(source: str, offset: int | None, reason: str, detail: str, record_id: str | None = None, raw: bytes | None = None) -> dict:
    return {
        "source": source,
        "offset": offset,
        "reason": reason,
        "detail": detail,
        "record_id": record_id,
        "snippet": raw[:SNIPPET_BYTES] if raw else None,
    }


def quarantine_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA)


def empty_documents() -> pa.Table:
    return DOCUMENT_SCHEMA.empty_table()


def conform(table: pa.Table) -> pa.Table:
    """Cast a table that carries the document columns (and maybe more) to DOCUMENT_SCHEMA's
    columns first, keeping extra columns (scores added by steps) after them."""
    missing = [f.name for f in DOCUMENT_SCHEMA if f.name not in table.column_names and not f.nullable]
    if missing:
        raise ValueError(f"not a document table: missing required columns {missing}")
    columns, fields = [], []
    for f in DOCUMENT_SCHEMA:
        col = table.column(f.name) if f.name in table.column_names else pa.nulls(len(table), f.type)
        columns.append(col.cast(f.type) if col.type != f.type else col)
        fields.append(f)
    for name in table.column_names:
        if DOCUMENT_SCHEMA.get_field_index(name) < 0:
            columns.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=DOCUMENT_SCHEMA.metadata))
