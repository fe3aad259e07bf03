"""A WARC record parser that reports damage and carries on.

Why not FastWARC: it is faster at parsing, but it raises on the first damaged gzip member
(ending the file) and silently skips records with broken headers, so neither can be
quarantined with an offset. Parsing is a small share of the cost next to decompression and
HTML extraction (see docs/extraction.md), so this parser trades a little speed for exact
accounting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Union

from pipeline.readers.streams import ByteReader, StreamBreak

MAX_HEADER_BYTES = 64 << 10
MAX_LINE = 16 << 10


@dataclass
class WarcRecord:
    offset: int  # compressed offset of the gzip member where the record starts (byte offset if uncompressed)
    inner: int  # decompressed offset of the record inside that member (0 for one record per member)
    headers: dict[str, str]  # WARC headers, names lower-cased
    length: int  # Content-Length
    block: bytes | None  # None when the block was longer than the limit and skipped unread
    head: bytes  # the raw header bytes (for quarantine snippets)

    @property
    def type(self) -> str:
        return self.headers.get("warc-type", "").lower()

    @property
    def record_id(self) -> str | None:
        rid = self.headers.get("warc-record-id")
        return rid.strip().strip("<>") if rid else None

    @property
    def locator(self) -> str:
        return f"{self.offset}+{self.inner}" if self.inner else str(self.offset)


@dataclass
class RecordError:
    offset: int
    reason: str
    detail: str
    record_id: str | None = None
    raw: bytes | None = None


def iter_warc_records(reader: ByteReader, max_block: int) -> Iterator[Union[WarcRecord, RecordError]]:
    """Every record of a WARC stream, or a RecordError for each stretch that is not one."""
    pushed: bytes | None = None  # a version line found while resynchronising
    while True:
        record_id = None
        offset = None
        try:
            if pushed is not None:
                line, pushed = pushed, None
                start = reader.tell() - len(line)
            else:
                reader.mark_record_start()
                line = reader.readline(MAX_LINE)
                while line in (b"\r\n", b"\n"):
                    reader.mark_record_start()
                    line = reader.readline(MAX_LINE)
                if not line:
                    return
                start = reader.tell() - len(line)
            offset, inner = reader.locate(start)
            if not line.startswith(b"WARC/"):
                pushed, skipped = _resync(reader)
                yield RecordError(offset, "bad_warc_header", f"expected a WARC/1.x version line at {offset}, found {line[:40]!r}; skipped {len(line) + skipped} bytes to the next record", raw=line)
                continue
            head = [line]
            headers: dict[str, str] = {}
            size = len(line)
            problem = None
            last = None
            while True:
                line = reader.readline(MAX_LINE)
                size += len(line)
                head.append(line)
                if line in (b"\r\n", b"\n"):
                    break
                if not line:
                    problem = "the stream ended inside the WARC headers"
                    break
                if size > MAX_HEADER_BYTES:
                    problem = f"WARC headers longer than {MAX_HEADER_BYTES} bytes"
                    break
                if line[:1] in (b" ", b"\t") and last is not None:  # folded continuation line
                    headers[last] += " " + line.strip().decode("utf-8", "replace")
                    continue
                name, colon, value = line.partition(b":")
                if not colon or not name.strip():
                    problem = f"header line without a name and colon: {line[:60]!r}"
                    break
                last = name.strip().decode("ascii", "replace").lower()
                headers[last] = value.strip().decode("utf-8", "replace")
            raw_head = b"".join(head)
            rid = headers.get("warc-record-id")
            record_id = rid.strip().strip("<>") if rid else None
            length_text = headers.get("content-length", "")
            if problem is None and not length_text.isdigit():
                problem = f"Content-Length is {length_text!r}, not a byte count"
            if problem is not None:
                pushed, skipped = _resync(reader)
                yield RecordError(offset, "bad_warc_header", f"{problem}; skipped to the next record ({skipped} bytes)", record_id, raw_head)
                continue
            length = int(length_text)
            if length > max_block:
                got = reader.skip(length)
                block = None
            else:
                block = reader.read(length)
                got = len(block)
            if got < length:
                yield RecordError(offset, "truncated_record", f"the stream ended {length - got} bytes before the end of the record's {length}-byte block", record_id, raw_head)
                return
            yield WarcRecord(offset, inner, headers, length, block, raw_head)
        except StreamBreak as exc:
            brk = exc.brk
            at = brk.member_offset if brk.member_offset is not None else offset if offset is not None else reader.tell()
            yield RecordError(at, brk.reason, brk.detail, record_id)
            pushed = None


def _resync(reader: ByteReader) -> tuple[bytes | None, int]:
    """Skip to the next line that starts a WARC record; returns that line (or None at the end)
    and the bytes skipped."""
    skipped = 0
    while True:
        line = reader.readline(MAX_LINE)
        if not line:
            return None, skipped
        if line.startswith(b"WARC/1."):
            return line, skipped
        skipped += len(line)
