"""JSON Lines → documents. `text` is required; known fields map to schema columns; every
other field is kept in the `metadata` JSON (merged with a `metadata` object if there is one)."""

from __future__ import annotations

import json
from typing import Any, Iterator

from pipeline.readers.base import DocumentBatch, StreamReader, fallback_id, parse_timestamp
from pipeline.readers.streams import ByteReader, StreamBreak

# Input field → document column. `source` is not mapped: the document's source is the input
# object; a record's own "source" field is kept in metadata.
TIMESTAMP_FIELDS = ("crawl_timestamp", "timestamp", "date", "created")
SCALAR_FIELDS = ("url", "language", "license")


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
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.quarantine(offset, "invalid_utf8", f"line is not valid UTF-8 at byte {exc.start} ({exc.reason})", raw=line)
            return False
        try:
            row = json.loads(line)
        except ValueError as exc:
            self.quarantine(offset, "bad_json", f"not a JSON value: {exc}", raw=line)
            return False
        if not isinstance(row, dict):
            self.quarantine(offset, "bad_json", f"a JSON {type(row).__name__}, not an object", raw=line)
            return False
        text = row.pop("text", None)
        if not isinstance(text, str):
            self.quarantine(offset, "missing_text", "no string field `text`" if text is None else f"`text` is a {type(text).__name__}, not a string", raw=line)
            return False
        # JSON \ud800-style escapes can make lone surrogates, which are not encodable text.
        if b"\\ud" in line or b"\\uD" in line:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                self.quarantine(offset, "invalid_utf8", f"`text` holds an unpaired surrogate at character {exc.start}", raw=line)
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
        batch.add(
            id=str(given_id) if given_id not in (None, "") else fallback_id(self.uri, str(offset)),
            text=text,
            provenance=f"jsonl:{offset}",
            metadata=_metadata(row),
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
