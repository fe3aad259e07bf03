"""A WARC record parser that reports damage and carries on.

Why not FastWARC: it is faster at parsing, but it raises on the first damaged gzip member
(ending the file) and silently skips records with broken headers, so neither can be
quarantined with an offset. Parsing is a small share of the cost next to decompression and
HTML extraction (see docs/extraction.md), so this parser trades a little speed for exact
accounting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, Union

from pipeline.readers.streams import ByteReader, StreamBreak

MAX_HEADER_BYTES = 64 << 10
MAX_LINE = 16 << 10
RECORD_START = b"WARC/1."
SEPARATOR_PEEK = 12
_RECORD_LINE = re.compile(rb"\nWARC/1\.[01]\r?\n")


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
    rescanned = 0  # bytes put back to be parsed again after a wrong Content-Length
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
            block_start = reader.tell()
            # A record never runs into a later gzip member that starts a record: stop there.
            if length > max_block:
                got, block = reader.skip(length, stop_at=RECORD_START), None
            else:
                block = reader.read(length, stop_at=RECORD_START)
                got = len(block)
            stopped_at_member = got < length and reader.peek(1) != b""
            if got == length:
                try:
                    whole = _ends_cleanly(reader)
                except StreamBreak as exc:  # the next member is damaged; this record is whole
                    yield WarcRecord(offset, inner, headers, length, block, raw_head)
                    yield _break_error(exc.brk, reader.tell(), None)
                    continue
                if whole:
                    yield WarcRecord(offset, inner, headers, length, block, raw_head)
                    continue
            # The block is short or does not end where the record does: resynchronise at the
            # next record start (where the read stopped, inside the block read, or further on).
            # Bytes are put back to be read again at most once over in all: linear time.
            inside = _record_start_in(block) if block is not None and not stopped_at_member and rescanned <= reader.tell() else None
            if stopped_at_member:
                where = f"runs into the gzip member of the next record at decompressed byte {block_start + got}"
            elif inside is not None:
                reader.unread(block[inside:])
                rescanned += len(block) - inside
                where = f"runs into the next record at decompressed byte {block_start + inside}"
            elif got < length:
                yield RecordError(offset, "truncated_record", f"the stream ended {length - got} bytes before the end of the record's {length}-byte block", record_id, raw_head)
                continue
            else:
                pushed, skipped = _resync(reader)
                where = f"is not followed by the record separator; skipped {skipped} more bytes to the next record"
            yield RecordError(offset, "bad_content_length", f"Content-Length {length} {where}; the read resumes there", record_id, raw_head)
        except StreamBreak as exc:
            yield _break_error(exc.brk, offset if offset is not None else reader.tell(), record_id)
            pushed = None


def _break_error(brk, fallback_offset: int, record_id: str | None) -> RecordError:
    return RecordError(brk.member_offset if brk.member_offset is not None else fallback_offset, brk.reason, brk.detail, record_id)


def _ends_cleanly(reader: ByteReader) -> bool:
    """Whether the bytes after a block are the record separator (CRLF CRLF), allowing writers
    that use fewer or bare newlines, as long as the next record or the end follows."""
    tail = reader.peek(SEPARATOR_PEEK)
    if tail.startswith(b"\r\n\r\n"):
        return True
    rest = tail.lstrip(b"\r\n")
    if len(tail) - len(rest) > 4:
        return False
    return rest.startswith(RECORD_START[:5]) or (not rest and len(tail) < SEPARATOR_PEEK)


def _record_start_in(block: bytes) -> int | None:
    """Where the first line that starts a WARC record begins inside `block` (not at 0)."""
    m = _RECORD_LINE.search(block)
    return m.start() + 1 if m else None


def _resync(reader: ByteReader) -> tuple[bytes | None, int]:
    """Skip to the next line that starts a WARC record; returns that line (or None at the end)
    and the bytes skipped."""
    skipped = 0
    while True:
        line = reader.readline(MAX_LINE)
        if not line:
            return None, skipped
        if line.startswith(RECORD_START):
            return line, skipped
        skipped += len(line)
