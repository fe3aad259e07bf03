"""JSON Lines → documents. `text` is required; known fields map to schema columns; every
other field is kept in the `metadata` JSON (merged with a `metadata` object if there is one).

Lenient where the meaning is clear: a UTF-8 byte order mark before the first line is dropped,
raw control characters inside strings are accepted (the text is normalised afterwards) and
the non-JSON constants NaN/Infinity read as null. A line is quarantined when it is not UTF-8
(`invalid_utf8`, also for escaped lone surrogates anywhere in the object), not a JSON object
or nested too deep to parse (`bad_json`), has no string `text` (`missing_text`), or no text
once stripped (`empty_text`).
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from pipeline.readers.base import DocumentBatch, StreamReader, fallback_id, parse_timestamp
from pipeline.readers.streams import ByteReader, StreamBreak

# Input field → document column. `source` is not mapped: the document's source is the input
# object; a record's own "source" field is kept in metadata.
TIMESTAMP_FIELDS = ("crawl_timestamp", "timestamp", "date", "created")
SCALAR_FIELDS = ("url", "language", "license")
BOM = "\ufeff"


def _null(constant: str) -> None:
    """NaN, Infinity, -Infinity (Python's json writes them; JSON has no such values) → null."""
    return None


class JsonlReader(StreamReader):
    fmt = "jsonl"

    def _parse(self, reader: ByteReader, batch: DocumentBatch) -> Iterator[None]:
        limit = self.max_doc_bytes + 1
        while True:
            offset = reader.tell()
            try:
                line = reader.readline(limit)
            except StreamBreak as exc:
                self._records += 1
                self.quarantine(offset, exc.brk.reason, exc.brk.detail)
                continue
            if not line:
                return
            if len(line) >= limit and not line.endswith(b"\n"):
                self._records += 1
                rest = self._skip_line(reader, limit)
                self.quarantine(offset, "oversize", f"line is over {len(line) + rest - 1} bytes, over the {self.max_doc_bytes}-byte limit (skipped unparsed)", raw=line[:256])
                continue
            if not line.strip():
                continue  # blank lines are separators, not records
            self._records += 1
            if self._document(line, offset, batch):
                yield

    @staticmethod
    def _skip_line(reader: ByteReader, limit: int) -> int:
        skipped = 0
        while True:
            try:
                part = reader.readline(limit)
            except StreamBreak:
                return skipped
            skipped += len(part)
            if not part or part.endswith(b"\n"):
                return skipped

    def _document(self, line: bytes, offset: int, batch: DocumentBatch) -> bool:
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.quarantine(offset, "invalid_utf8", f"line is not valid UTF-8 at byte {exc.start} ({exc.reason})", raw=line)
            return False
        if offset == 0 and decoded.startswith(BOM):
            decoded = decoded[1:]
        try:
            row = json.loads(decoded, strict=False, parse_constant=_null)
        except ValueError as exc:
            self.quarantine(offset, "bad_json", f"not a JSON value: {exc}", raw=line)
            return False
        except RecursionError:
            self.quarantine(offset, "bad_json", "JSON nested too deep to parse", raw=line)
            return False
        if not isinstance(row, dict):
            self.quarantine(offset, "bad_json", f"a JSON {type(row).__name__}, not an object", raw=line)
            return False
        text = row.pop("text", None)
        if not isinstance(text, str):
            self.quarantine(offset, "missing_text", "no string field `text`" if text is None else f"`text` is a {type(text).__name__}, not a string", raw=line)
            return False
        # JSON \ud800-style escapes can make lone surrogates, which are not encodable text.
        if "\\ud" in decoded or "\\uD" in decoded:
            try:
                text.encode("utf-8")
                json.dumps(row, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as exc:
                self.quarantine(offset, "invalid_utf8", f"an unpaired surrogate ({exc.object[exc.start:exc.end]!a}) in the object", raw=line)
                return False
        text = text.strip()
        if not text:
            self.quarantine(offset, "empty_text", "`text` is empty", raw=line)
            return False
        given_id = row.pop("id", None)
        # Pop the mapped fields first: what is left over becomes metadata.
        mapped = {name: _pop_str(row, name) for name in SCALAR_FIELDS}
        mapped["crawl_timestamp"] = _pop_timestamp(row)
        mapped["language_score"] = _pop_float(row, "language_score")
        if isinstance(given_id, (dict, list)):
            row["id"], given_id = given_id, None  # not an id: kept in metadata
        metadata = _metadata(row)
        try:
            # Encoded here, not in the batch: nesting that json.loads just managed can be too
            # deep for json.dumps a few stack frames further down.
            metadata_json = json.dumps(metadata, ensure_ascii=False, sort_keys=True) if metadata else None
        except RecursionError:
            self.quarantine(offset, "bad_json", "JSON nested too deep to encode its metadata", raw=line)
            return False
        batch.add(
            id=str(given_id) if given_id not in (None, "") else fallback_id(self.uri, str(offset)),
            text=text,
            provenance=f"jsonl:{offset}",
            offset=offset,
            metadata=metadata_json,
            **mapped,
        )
        return True


def _pop_str(row: dict, name: str) -> str | None:
    value = row.get(name)
    if isinstance(value, str):
        del row[name]
        return value
    return None  # absent, or not a string: stays in metadata as given


def _pop_float(row: dict, name: str) -> float | None:
    value = row.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        del row[name]
        return float(value)
    return None


def _pop_timestamp(row: dict) -> Any:
    for name in TIMESTAMP_FIELDS:
        if isinstance(row.get(name), str) and (parsed := parse_timestamp(row[name])) is not None:
            del row[name]
            return parsed
    return None


def _metadata(row: dict) -> dict | None:
    meta = row.pop("metadata", None)
    if isinstance(meta, str):
        try:
            parsed = json.loads(meta)
            meta = parsed if isinstance(parsed, dict) else {"metadata": meta}
        except ValueError:
            meta = {"metadata": meta}
    elif meta is not None and not isinstance(meta, dict):
        meta = {"metadata": meta}
    if row:
        meta = {**row, **(meta or {})}  # the record's own metadata object wins on a clash
    return meta or None
