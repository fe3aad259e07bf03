"""Streaming, batched readers: WARC (HTML extraction), WET, JSONL and Parquet, from S3 or
local paths, gzip (incl. one member per record) and zstd, into DOCUMENT_SCHEMA tables.

    reader = open_reader(uri, store=None, fmt=None, batch_size=1000, max_doc_bytes=5_000_000)
    for table in reader: ...          # pa.Table, DOCUMENT_SCHEMA, <= batch_size rows
    reader.quarantine_table()         # QUARANTINE_SCHEMA rows: what could not become a document
    reader.stats                      # records, documents, skipped{kind}, quarantined{reason}, bytes_read

Nothing bad in an input stops a read: each damaged or unusable record becomes one
quarantine row with its offset and a reason code, a short stable snake_case string
(docs/extraction.md has the table): truncated_gzip, corrupt_zstd, truncated_record,
bad_warc_header, bad_content_length, bad_http, bad_content_encoding, non_html, invalid_utf8,
invalid_encoding, oversize, bad_json, missing_text, empty_text, empty_input, wrong_schema,
corrupt_parquet. Only storage errors escape (to be retried). Every reader normalises text the
same way (`base.clean_text`, vectorised): CR LF and CR become LF, other control characters
except tab are removed.
"""

from __future__ import annotations

from pipeline.readers.base import DEFAULT_BATCH_SIZE, DEFAULT_MAX_DOC_BYTES, Reader
from pipeline.readers.jsonl import JsonlReader
from pipeline.readers.parquet import ParquetReader
from pipeline.readers.warc import WarcReader, WetReader
from pipeline.storage import ObjectStore, basename

READERS: dict[str, type[Reader]] = {"warc": WarcReader, "wet": WetReader, "jsonl": JsonlReader, "parquet": ParquetReader}
COMPRESSION_SUFFIXES = (".gz", ".zst", ".zstd")


def detect_format(uri: str) -> str:
    """The format from the object name: *.warc[.gz|.zst], *.wet / *.warc.wet[.gz],
    *.jsonl / *.json / *.ndjson[.gz|.zst], *.parquet. Raises ValueError for anything else."""
    name = basename(uri).lower()
    for suffix in COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name.endswith(".wet"):
        return "wet"
    if name.endswith((".warc", ".arc.warc")):
        return "warc"
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    raise ValueError(f"cannot tell the format of {uri!r} from its name; pass fmt= one of {sorted(READERS)}")


def open_reader(uri: str, store: ObjectStore | None = None, fmt: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                max_doc_bytes: int = DEFAULT_MAX_DOC_BYTES) -> Reader:
    """A reader for one input object. Nothing is opened until it is iterated."""
    fmt = fmt or detect_format(uri)
    if fmt not in READERS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {sorted(READERS)}")
    return READERS[fmt](uri, store, batch_size=batch_size, max_doc_bytes=max_doc_bytes)


__all__ = ["open_reader", "detect_format", "Reader", "WarcReader", "WetReader", "JsonlReader", "ParquetReader", "READERS"]
