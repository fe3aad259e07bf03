"""The drill set: one good input and a zoo of bad ones, each with what a read of it must give.

Every file is generated here (small, except the 60 MB document, which is written streaming
through gzip); the good file and the WARC-based cases start from the shared real data.
`Drill.expect` says, per file, either the skip reason (not an input at all) or the quarantine
reasons and the number of documents a read keeps. `CLASSES` names the bad-input class each
file stands for (several files can share one class).
"""

from __future__ import annotations

import gzip
import io
import json
import random
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from tests.readers.warcfiles import gz, gzip_members, record_type, response_record, warc_record

GOOD_DOCS = 200
HUGE_DOC_BYTES = 60 << 20


@dataclass
class Drill:
    name: str  # object name under raw/
    data: bytes | Path
    cls: str  # the bad-input class, for the count in the report
    skipped: str | None = None  # skip reason, for objects that are not inputs
    reasons: set[str] = field(default_factory=set)  # quarantine reasons a read must give (exactly)
    docs: int | None = None  # documents a read keeps (None: not fixed by the drill)
    reasons_within: set[str] | None = None  # for random junk: reasons must come from this set


def jsonl(*rows) -> bytes:
    """One line per row: bytes and str as given (raw JSON text), anything else JSON-encoded."""
    return b"".join((r if isinstance(r, bytes) else r.encode() if isinstance(r, str) else json.dumps(r).encode()) + b"\n" for r in rows)


def parquet(table: pa.Table, **kwargs) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kwargs)
    return buf.getvalue()


def with_length(record: bytes, delta: int) -> bytes:
    n = int(re.search(rb"Content-Length: (\d+)", record).group(1))
    return record.replace(f"Content-Length: {n}".encode(), f"Content-Length: {n + delta}".encode(), 1)


def huge_document(path: Path) -> Path:
    """One 60 MB JSON line (then a normal one), written through gzip in pieces."""
    words = ("lorem ipsum dolor sit amet consectetur " * 1000).encode()
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(b'{"id": "huge", "text": "')
        for _ in range(HUGE_DOC_BYTES // len(words) + 1):
            fh.write(words)
        fh.write(b'"}\n{"id": "after-huge", "text": "the document after the huge one"}\n')
    return path


def drills(shared: Path, scratch: Path) -> tuple[list[dict], list[Drill]]:
    """(the good file's rows, every drill file including the good one)."""
    with gzip.open(shared / "corpora/web/web_sample.jsonl.gz", "rt") as fh:
        good_rows = [json.loads(line) for _, line in zip(range(GOOD_DOCS), fh)]
    members = gzip_members((shared / "corpora/warc/sample-0000.warc.gz").read_bytes())
    records = [zlib.decompress(m, 31) for m in members]
    k = next(i for i, m in enumerate(members) if i > 5 and record_type(m) == "response")
    warc_docs = sum(record_type(m) == "response" for m in members)
    text_rows = [{"id": f"t{i}", "text": f"an ordinary document, number {i}"} for i in range(3)]
    rng = random.Random(12)
    invalid_utf8 = pa.Array.from_buffers(pa.string(), 2, pa.array([b"fine text", b"bad \xff\xfe text"], pa.binary()).buffers())
    ten_groups = pa.table({"id": [str(i) for i in range(3000)], "text": [f"parquet document {i} " * 10 for i in range(3000)]})
    corrupt_page = bytearray(parquet(ten_groups, row_group_size=1000))
    column = pq.ParquetFile(io.BytesIO(bytes(corrupt_page))).metadata.row_group(1).column(1)
    page = column.dictionary_page_offset or column.data_page_offset
    corrupt_page[page + 3 : page + 19] = b"\xff" * 16
    good_parquet = parquet(pa.table({"text": ["one", "two", "three"]}))
    junk = bytes(rng.getrandbits(8) for _ in range(64 << 10))
    zstd_rows = zstandard.ZstdCompressor().compress(jsonl(*text_rows) * 200)
    gzip_rows = gzip.compress(jsonl(*text_rows) * 300, mtime=0)

    return good_rows, [
        Drill("good.jsonl.gz", gzip.compress(jsonl(*good_rows), mtime=0), "good", docs=GOOD_DOCS),
        # not inputs
        Drill("_SUCCESS", b"", "marker file", skipped="unknown_format"),
        Drill("README.md", b"# crawl drop of today\n", "readme", skipped="unknown_format"),
        Drill("part-0000.parquet.crc", b"\x00\x01crc", "checksum sidecar", skipped="unknown_format"),
        # empty
        Drill("empty.jsonl.gz", gzip.compress(b"", mtime=0), "valid empty gzip", reasons={"empty_input"}, docs=0),
        Drill("zero-bytes.jsonl", b"", "zero-byte file", reasons={"empty_input"}, docs=0),
        Drill("no-rows.parquet", parquet(pa.table({"text": pa.array([], pa.string())})), "Parquet without rows", reasons={"empty_input"}, docs=0),
        # JSON Lines
        Drill("deep.jsonl", jsonl(b"[" * 100_000 + b"]" * 100_000, text_rows[0]), "100k-deep JSON", reasons={"bad_json"}, docs=1),
        Drill("nul.jsonl", jsonl({"id": "nul", "text": "before\u0000after \u001b[2J"}), "NUL and control characters", docs=1),
        Drill("crlf.jsonl", jsonl(*({**r, "text": r["text"].replace("\n", "\r\n")} for r in good_rows[:20])).replace(b"\n", b"\r\n"), "CRLF text", docs=20),
        Drill("control-only.jsonl", jsonl({"id": "c", "text": "\u0000\u0007\r\n"}, text_rows[0]), "text of control characters only", reasons={"empty_text"}, docs=1),
        Drill("truncated.jsonl.gz", gzip_rows[: len(gzip_rows) // 2], "truncated gzip", reasons={"truncated_gzip"}),
        Drill("garbage-tail.jsonl.gz", gzip.compress(jsonl(*text_rows), mtime=0) + b"GARBAGE AFTER THE END" * 10, "garbage tail", reasons={"truncated_gzip"}, docs=3),
        Drill("invalid-utf8.jsonl", jsonl(text_rows[0], b'{"text": "caf\xe9 au lait"}'), "invalid UTF-8", reasons={"invalid_utf8"}, docs=1),
        Drill("lone-surrogate.jsonl", jsonl(text_rows[0], '{"text": "lone \\ud800 surrogate"}', '{"text": "fine", "url": "http://x/\\udfff"}'), "lone surrogates", reasons={"invalid_utf8"}, docs=1),
        Drill("huge-doc.jsonl.gz", huge_document(scratch / "huge-doc.jsonl.gz"), "60 MB document", reasons={"oversize"}, docs=1),
        Drill("binary-junk.jsonl", junk, "binary junk named .jsonl", docs=0, reasons_within={"invalid_utf8", "bad_json", "missing_text", "oversize"}),
        Drill("text-missing.jsonl", jsonl({"body": "no text field"}, text_rows[0]), "text missing", reasons={"missing_text"}, docs=1),
        Drill("text-null.jsonl", jsonl({"text": None}, text_rows[0]), "text null", reasons={"missing_text"}, docs=1),
        Drill("text-number.jsonl", jsonl({"text": 42}, text_rows[0]), "text a number", reasons={"missing_text"}, docs=1),
        Drill("text-list.jsonl", jsonl({"text": ["a", "list"]}, text_rows[0]), "text a list", reasons={"missing_text"}, docs=1),
        Drill("not-objects.jsonl", jsonl([1, 2], "\"a string\"", 3.5, "null", text_rows[0]), "JSON values that are not objects", reasons={"bad_json"}, docs=1),
        Drill("utf16.jsonl", "\n".join(json.dumps(r) for r in text_rows).encode("utf-16"), "UTF-16 encoded", docs=0, reasons_within={"invalid_utf8", "bad_json"}),
        Drill("bom.jsonl", b"\xef\xbb\xbf" + jsonl(*text_rows), "UTF-8 byte order mark", docs=3),
        Drill("zstd-named.jsonl.gz", zstd_rows, "zstd named .gz", docs=600),
        Drill("truncated.jsonl.zst", zstd_rows[: len(zstd_rows) // 2], "truncated zstd", reasons={"corrupt_zstd"}),
        Drill("données 日本 #1 ?%.jsonl", jsonl(text_rows[1]), "unicode and URL-special file name", docs=1),
        # WARC / WET
        Drill("long-content-length.warc.gz", b"".join(members[:k] + [gz(with_length(records[k], 60_000))] + members[k + 1 :]), "Content-Length too long",
              reasons={"bad_content_length", "non_html"}, docs=warc_docs - 1),
        Drill("short-content-length.warc", b"".join(records[:k] + [with_length(records[k], -300)] + records[k + 1 :]), "Content-Length too short",
              reasons={"bad_content_length", "non_html"}, docs=warc_docs - 1),
        Drill("script-only.warc.gz", gz(response_record("c0000000-0000-0000-0000-000000000001", "https://x.example/s", "text/html",
                                                         b"<html><head><script>document.write('x'.repeat(9))</script></head><body><script>var a=1;</script></body></html>")),
              "script-only HTML", reasons={"empty_text"}, docs=0),
        Drill("crlf.warc.wet.gz", gz(warc_record({"WARC-Type": "conversion", "WARC-Record-ID": "<urn:uuid:c0000000-0000-0000-0000-000000000030>"},
                                                 "a WET text\r\nwith CRLF lines\rand a lone CR".encode())), "CRLF in WET", docs=1),
        # Parquet
        Drill("corrupt-page.parquet", bytes(corrupt_page), "Parquet with a corrupt page", reasons={"corrupt_parquet"}, docs=2000),
        Drill("truncated.parquet", good_parquet[: len(good_parquet) // 2], "truncated Parquet", reasons={"corrupt_parquet"}, docs=0),
        Drill("junk.parquet", junk[:4096], "binary junk named .parquet", reasons={"corrupt_parquet"}, docs=0),
        Drill("wrong-schema.parquet", parquet(pa.table({"text": [1, 2, 3]})), "wrong Parquet schema (text not a string)", reasons={"wrong_schema"}, docs=0),
        Drill("invalid-utf8.parquet", parquet(pa.table({"text": invalid_utf8})), "invalid UTF-8 in a Parquet string column", reasons={"invalid_utf8"}, docs=1),
    ]
