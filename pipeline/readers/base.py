"""What every reader shares: counting, quarantine, text normalisation, and building
DOCUMENT_SCHEMA batches."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections import Counter
from datetime import datetime
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.readers.streams import ByteReader, CountingStream, decompressed_events
from pipeline.schema import DOCUMENT_SCHEMA, QUARANTINE_SCHEMA, quarantine_row
from pipeline.storage import ObjectStore

DEFAULT_BATCH_SIZE = 1000
DEFAULT_MAX_DOC_BYTES = 5_000_000
# Quarantine rows kept per input (about 0.5 KB each): a file of millions of junk lines must not
# exhaust a worker's memory. Counts in `stats["quarantined"]` stay exact beyond it.
MAX_QUARANTINE_ROWS = 100_000

# Text normalisation (RE2 syntax, matched on code points): CR LF and lone CR become LF; control
# characters (Unicode Cc: C0, DEL, C1) other than tab and newline are removed.
LINE_BREAK = r"\r\n?"
CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x{80}-\x{9f}]"
NEEDS_CLEANING = r"[\x00-\x08\x0b-\x1f\x7f\x{80}-\x{9f}]"  # CONTROL or CR


def clean_text(text: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`text` with line breaks normalised to LF and other control characters removed, the rows
    that changed trimmed again. Vectorised; rows that need nothing (nearly all) are not copied."""
    if isinstance(text, pa.ChunkedArray):
        text = text.chunk(0) if text.num_chunks == 1 else text.combine_chunks()
    dirty = pc.fill_null(pc.match_substring_regex(text, NEEDS_CLEANING), False)
    if not pc.any(dirty).as_py():
        return text
    rows = pc.replace_substring_regex(text.filter(dirty), LINE_BREAK, "\n")
    rows = pc.utf8_trim_whitespace(pc.replace_substring_regex(rows, CONTROL, ""))
    return pc.replace_with_mask(text, dirty, rows)


def fallback_id(source: str, locator: str) -> str:
    """A stable id for a record that brings none: the same input and position give the same id."""
    return "sha1:" + hashlib.sha1(f"{source}#{locator}".encode()).hexdigest()


def parse_timestamp(value: str | None) -> datetime | None:
    """WARC-Date / ISO 8601 → aware datetime; None when absent or unparseable (not worth a quarantine)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None  # a naive time has no defined instant; leave it out rather than guess
    return parsed


class DocumentBatch:
    """Column lists for one output batch; `source` is the same for every row of a reader."""

    COLUMNS = ("id", "text", "url", "crawl_timestamp", "language", "language_score", "license", "provenance", "metadata")

    def __init__(self, source: str):
        self.source = source
        self.clear()

    def clear(self) -> None:
        self.cols: dict[str, list] = {name: [] for name in self.COLUMNS}
        self.offsets: list[int] = []  # each row's quarantine offset, should its text clean to nothing

    def __len__(self) -> int:
        return len(self.cols["id"])

    def add(self, *, id: str, text: str, provenance: str, offset: int, url: str | None = None, crawl_timestamp: datetime | None = None,
            language: str | None = None, language_score: float | None = None, license: str | None = None,
            metadata: dict[str, Any] | str | None = None) -> None:
        self.offsets.append(offset)
        c = self.cols
        c["id"].append(id)
        c["text"].append(text)
        c["url"].append(url)
        c["crawl_timestamp"].append(crawl_timestamp)
        c["language"].append(language)
        c["language_score"].append(language_score)
        c["license"].append(license)
        c["provenance"].append(provenance)
        if metadata is not None and not isinstance(metadata, str):
            metadata = json.dumps(metadata, ensure_ascii=False, sort_keys=True) if metadata else None
        c["metadata"].append(metadata)

    def take(self) -> tuple[pa.Table, list[int]]:
        """The batch as a table (text not yet normalised) and the rows' offsets; empties the batch."""
        n = len(self)
        offsets = self.offsets
        arrays = []
        for f in DOCUMENT_SCHEMA:
            if f.name == "source":
                arrays.append(pa.array([self.source] * n, f.type))
            else:
                arrays.append(pa.array(self.cols[f.name], f.type))
        self.clear()
        return pa.Table.from_arrays(arrays, schema=DOCUMENT_SCHEMA), offsets


class Reader(ABC):
    """Base of the format readers. Iterate once for tables; then look at `stats` and
    `quarantine_table()` (they are also valid mid-way)."""

    fmt = ""

    def __init__(self, uri: str, store: ObjectStore | None = None, *, batch_size: int = DEFAULT_BATCH_SIZE,
                 max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.uri = uri
        self.store = store or ObjectStore()
        self.batch_size = batch_size
        self.max_doc_bytes = max_doc_bytes
        self._records = 0
        self._documents = 0
        self._skipped: Counter[str] = Counter()
        self._quarantined: Counter[str] = Counter()
        self._quarantine_rows: list[dict] = []
        self._quarantine_rows_not_stored = 0
        self._started = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    @property
    def stats(self) -> dict:
        stats = {
            "records": self._records,
            "documents": self._documents,
            "skipped": dict(self._skipped),
            "quarantined": dict(self._quarantined),
            "bytes_read": self._bytes_read(),
        }
        if self._quarantine_rows_not_stored:
            stats["quarantine_rows_not_stored"] = self._quarantine_rows_not_stored
        return stats

    def _bytes_read(self) -> int:
        return 0

    def quarantine_table(self) -> pa.Table:
        return pa.Table.from_pylist(self._quarantine_rows, schema=QUARANTINE_SCHEMA)

    def quarantine(self, offset: int | None, reason: str, detail: str, record_id: str | None = None, raw: bytes | None = None, *, records: int = 1) -> None:
        """One quarantine row for `records` records (several: a Parquet row group or file lost
        as a whole, counted by its rows in `stats`)."""
        self._quarantined[reason] += records
        if len(self._quarantine_rows) < MAX_QUARANTINE_ROWS:
            self._quarantine_rows.append(quarantine_row(self.uri, offset, reason, detail, record_id, raw))
        else:
            self._quarantine_rows_not_stored += 1

    def quarantine_empty_input(self, detail: str) -> None:
        """An input that holds no record at all is one quarantine row, so that it shows."""
        self._records += 1
        self.quarantine(0, "empty_input", detail)

    def skip(self, kind: str) -> None:
        self._skipped[kind] += 1

    @abstractmethod
    def __iter__(self) -> Iterator[pa.Table]:
        """DOCUMENT_SCHEMA tables of at most `batch_size` rows; a reader is iterated once."""

    def _start(self) -> None:
        if self._started:
            raise RuntimeError(f"{self!r} was already iterated; open a new reader to read again")
        self._started = True


class RecordReader(Reader):
    """A reader that makes documents one record at a time and cuts them into batches."""

    def __iter__(self) -> Iterator[pa.Table]:
        self._start()
        batch = DocumentBatch(self.uri)
        for _ in self._fill(batch):
            if len(batch) >= self.batch_size:
                if table := self._finish(batch):
                    yield table
        if len(batch) and (table := self._finish(batch)):
            yield table

    def _finish(self, batch: DocumentBatch) -> pa.Table | None:
        """The batch with its text normalised; rows left without text are quarantined."""
        table, offsets = batch.take()
        text = clean_text(table.column("text"))
        empty = pc.equal(text, "")
        if pc.any(empty).as_py():
            ids = table.column("id")
            for idx in np.flatnonzero(empty.to_numpy(zero_copy_only=False)):
                self.quarantine(offsets[idx], "empty_text", "only control characters and whitespace", ids[int(idx)].as_py())
            table, text = table.filter(pc.invert(empty)), text.filter(pc.invert(empty))
        table = table.set_column(table.schema.get_field_index("text"), DOCUMENT_SCHEMA.field("text"), text)
        self._documents += table.num_rows
        return table if table.num_rows else None

    @abstractmethod
    def _fill(self, batch: DocumentBatch) -> Iterator[None]:
        """Add documents to `batch`, yielding after each so the caller can cut batches."""


class StreamReader(RecordReader):
    """A reader of one byte stream (WARC, WET, JSONL): opened, counted as read from storage,
    decompressed (gzip members / zstd), handed to `_parse`, closed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._raw: CountingStream | None = None

    def _bytes_read(self) -> int:
        return self._raw.bytes_read if self._raw is not None else 0

    def _fill(self, batch: DocumentBatch) -> Iterator[None]:
        self._raw = CountingStream(self.store.open_read(self.uri))
        try:
            reader = ByteReader(decompressed_events(self._raw))
            yield from self._parse(reader, batch)
        finally:
            self._raw.close()
        if self._records == 0:
            self.quarantine_empty_input(f"{self._raw.bytes_read} bytes ({reader.tell()} decompressed) hold no record")

    @abstractmethod
    def _parse(self, reader: ByteReader, batch: DocumentBatch) -> Iterator[None]:
        """Turn the decompressed stream into documents, yielding after each one added."""
