"""Decompressed byte streams with locators, and recovery from damaged compression.

A WARC/WET file is usually a sequence of gzip members, one per record; the compressed offset
of a record's member is its locator (what a CDX index stores, what a range request needs).
`gzip_pieces` decompresses member by member and tags every piece of output with the
offset of the member it came from. When a member is damaged (truncated, corrupt), it reports
a `Break` and resynchronises at the next gzip header after the damaged member's start, so one
bad record costs one record, not the rest of the file (FastWARC, Python's gzip module and
pyarrow all stop at the first damaged member).

`ByteReader` turns those pieces into readline/read/skip calls with a position, and raises
`StreamBreak` where the data of a damaged member ends, so a parser can quarantine the record
it was reading and carry on with the next one. It remembers where every gzip member's output
starts and how it begins, so a record parser can stop a read at the start of the next record
when a record's declared length runs past its own member (`read`/`skip` with `stop_at`), and
put bytes back (`unread`) to resynchronise inside data it has already read.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import IO, Iterator, Union

import zstandard

READ_CHUNK = 1 << 20
FEED = 64 << 10  # compressed bytes per decompress call (leftovers past a member end are copied)
MAX_PIECE = 4 << 20  # bound on decompressed bytes per step: a zip bomb cannot blow memory
MAX_RESYNC_WINDOW = 64 << 20  # compressed bytes kept from a member's start to rescan after damage
MARK_HEAD = 16  # bytes of a member's output remembered with its start
GZIP_MAGIC = b"\x1f\x8b\x08"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class Piece:
    member_offset: int | None  # compressed offset of the gzip member; None for zstd/plain streams
    data: bytes


@dataclass(frozen=True)
class Break:
    """Data of the member at `member_offset` stopped short; what came before it is unreliable."""

    member_offset: int | None  # None: not a gzip stream, the reader's position locates it
    reason: str
    detail: str


Event = Union[Piece, Break]


class StreamBreak(Exception):
    def __init__(self, brk: Break):
        super().__init__(brk.detail)
        self.brk = brk


class CountingStream:
    """Wraps a raw stream to count the bytes read from storage (stats["bytes_read"])."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self.bytes_read = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.bytes_read += len(data)
        return data

    def close(self) -> None:
        self.raw.close()


def sniff_compression(head: bytes) -> str:
    """"gzip", "zstd" or "none" from the first bytes."""
    if head.startswith(GZIP_MAGIC[:2]):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def decompressed_events(raw: CountingStream) -> Iterator[Event]:
    """Pieces of the decompressed stream, compression told by magic bytes (names lie)."""
    head = raw.read(4)
    kind = sniff_compression(head)
    if kind == "gzip":
        return gzip_pieces(raw, head)
    if kind == "zstd":
        return zstd_pieces(raw, head)
    return plain_pieces(raw, head)


def plain_pieces(raw: CountingStream, head: bytes) -> Iterator[Event]:
    if head:
        yield Piece(None, head)
    while chunk := raw.read(READ_CHUNK):
        yield Piece(None, chunk)


def zstd_pieces(raw: CountingStream, head: bytes) -> Iterator[Event]:
    """zstd frames one after another. zstd has no cheap resync point, so damage ends the
    stream with a Break (what was decoded before it stands). A decompression object is used
    rather than zstandard's stream_reader, which returns b"" for a truncated frame instead of
    saying so."""
    dctx = zstandard.ZstdDecompressor()
    dobj = dctx.decompressobj()
    fed = False  # the current frame has input
    chunk = head
    while True:
        if not chunk:
            chunk = raw.read(FEED)
            if not chunk:
                if fed:
                    yield Break(None, "corrupt_zstd", "zstd stream ends inside a frame (file truncated)")
                return
        try:
            out = dobj.decompress(chunk)
        except zstandard.ZstdError as exc:
            yield Break(None, "corrupt_zstd", f"zstd stream damaged: {exc}")
            return
        fed = True
        if out:
            yield Piece(None, out)
        if dobj.eof:
            chunk = dobj.unused_data
            dobj = dctx.decompressobj()
            fed = False
        else:
            chunk = b""


def gzip_pieces(raw: CountingStream, head: bytes) -> Iterator[Event]:
    """Member-by-member gzip decompression with resynchronisation after damage."""
    buf, pos = head, 0  # compressed bytes read; buf[pos:] not yet fed to a decompressor
    member_start = 0  # compressed offset of the current member
    fed = 0  # compressed bytes fed to the current member
    window: list[bytes] = []  # the member's compressed bytes, kept to rescan after damage
    windowed = True  # False once the member outgrew MAX_RESYNC_WINDOW
    hunting = False  # after damage: skip to the next gzip header without further reports
    dec = zlib.decompressobj(31)
    at_eof = False

    while True:
        if len(buf) - pos < len(GZIP_MAGIC) and not at_eof:
            chunk = raw.read(READ_CHUNK)
            if chunk:
                buf, pos = buf[pos:] + chunk, 0
                continue
            at_eof = True
        if pos >= len(buf):
            if fed and not hunting:
                yield Break(member_start, "truncated_gzip", f"gzip member at byte {member_start} ends before its end marker (file truncated)")
            return
        if fed == 0:
            # At a member boundary: find the next header. Zero padding is skipped quietly;
            # other bytes are reported unless we are already resynchronising after damage.
            nxt = buf.find(GZIP_MAGIC, pos)
            if nxt != pos:
                skip = (len(buf) - pos - 2) if nxt < 0 else nxt - pos
                if skip <= 0:
                    if at_eof:
                        return  # a stray byte or two at the very end
                    continue
                junk = buf[pos : pos + skip]
                if not hunting and junk.strip(b"\0"):
                    at = member_start + len(junk) - len(junk.lstrip(b"\0"))
                    yield Break(at, "truncated_gzip", f"bytes at {at} are not gzip data (damaged or stray bytes between members)")
                    hunting = True
                member_start += skip
                pos += skip
                continue
        data = memoryview(buf)[pos : pos + FEED]
        try:
            out = dec.decompress(data, MAX_PIECE)
            while True:
                if out:
                    hunting = False
                    yield Piece(member_start, out)
                if dec.eof or not dec.unconsumed_tail:
                    break
                out = dec.decompress(dec.unconsumed_tail, MAX_PIECE)
        except zlib.error as exc:
            if not hunting:
                yield Break(member_start, "truncated_gzip", f"gzip member at byte {member_start} is damaged or truncated: {exc}")
            hunting = True
            # Rescan from just after the member's start: its deflate stream may have swallowed
            # the next member's header before the error showed.
            if windowed:
                rescan = b"".join(window) + bytes(data)
                buf, pos = rescan[1:] + buf[pos + len(data) :], 0
                member_start += 1
            else:
                pos += len(data)
                member_start += fed + len(data)
            fed, window, windowed, dec = 0, [], True, zlib.decompressobj(31)
            continue
        if dec.eof:
            used = len(data) - len(dec.unused_data)
            pos += used
            member_start += fed + used
            fed, window, windowed, dec = 0, [], True, zlib.decompressobj(31)
        else:
            pos += len(data)
            fed += len(data)
            if windowed:
                window.append(bytes(data))
                windowed = fed <= MAX_RESYNC_WINDOW
                if not windowed:
                    window = []


class ByteReader:
    """Line and block reads over decompressed pieces, with positions and member locators."""

    def __init__(self, events: Iterator[Event]):
        self._events = events
        self._buf = b""
        self._i = 0  # read position in _buf
        self._base = 0  # decompressed position of _buf[0]
        # (decompressed position, member offset, first bytes of the member's output), ascending
        self._marks: list[tuple[int, int, bytes]] = []
        self._done = False

    def tell(self) -> int:
        return self._base + self._i

    def locate(self, pos: int) -> tuple[int, int]:
        """(member offset, position inside the member's output) for a decompressed position;
        (position, 0) for streams without gzip members."""
        if not self._marks:
            return pos, 0
        member, start = 0, 0
        for mark_pos, offset, _ in self._marks:
            if mark_pos > pos:
                break
            member, start = offset, mark_pos
        return member, pos - start

    def _forget_marks_before(self, pos: int) -> None:
        # Keep the last mark at or before pos: it locates the record being read.
        keep = 0
        for idx, (mark_pos, _, _) in enumerate(self._marks):
            if mark_pos <= pos:
                keep = idx
        if keep:
            del self._marks[:keep]

    def _more(self) -> bool:
        """Append the next piece to the buffer; False at the end; StreamBreak on damage."""
        if self._done:
            return False
        for event in self._events:
            if isinstance(event, Break):
                # Drop the unread rest of the damaged member and everything buffered.
                self._base += len(self._buf)
                self._buf, self._i = b"", 0
                raise StreamBreak(event)
            if not event.data:
                continue
            end = self._base + len(self._buf)
            if event.member_offset is not None and (not self._marks or self._marks[-1][1] != event.member_offset):
                self._marks.append((end, event.member_offset, event.data[:MARK_HEAD]))
            if self._i:
                self._buf = self._buf[self._i :] + event.data
                self._base += self._i
                self._i = 0
            else:
                self._buf += event.data
            return True
        self._done = True
        return False

    def mark_record_start(self) -> None:
        self._forget_marks_before(self.tell())

    def readline(self, limit: int = 1 << 16) -> bytes:
        """One line including its b"\\n" (b"" at the end); at most `limit` bytes."""
        scanned = 0  # bytes after the read position already searched for a newline
        while True:
            nl = self._buf.find(b"\n", self._i + scanned, self._i + limit)
            if nl >= 0:
                line = self._buf[self._i : nl + 1]
                self._i = nl + 1
                return line
            scanned = min(len(self._buf) - self._i, limit)
            if scanned >= limit or not self._more():
                line = self._buf[self._i : self._i + scanned]
                self._i += scanned
                return line

    def read(self, n: int, stop_at: bytes | None = None) -> bytes:
        """Up to `n` bytes: fewer only at the end, or, with `stop_at`, where a gzip member whose
        output begins with `stop_at` starts (the next record, when a length is wrong)."""
        checked = 0
        while True:
            if stop_at is not None:
                checked, n = self._stop_before_member(stop_at, checked, n)
            if len(self._buf) - self._i >= n or not self._more():
                break
        out = self._buf[self._i : self._i + n]
        self._i += len(out)
        return out

    def skip(self, n: int, stop_at: bytes | None = None) -> int:
        """Discard up to `n` bytes without keeping them (stopping as `read` does); returns how
        many were skipped."""
        checked = 0
        skipped = 0
        while skipped < n:
            if stop_at is not None:
                checked, left = self._stop_before_member(stop_at, checked, n - skipped)
                n = skipped + left
            avail = len(self._buf) - self._i
            if avail == 0:
                self._base += len(self._buf)
                self._buf, self._i = b"", 0
                if not self._more():
                    break
                continue
            take = min(avail, n - skipped)
            self._i += take
            skipped += take
        return skipped

    def _stop_before_member(self, stop_at: bytes, checked: int, n: int) -> tuple[int, int]:
        """Shorten a read of `n` bytes from here to end before the first member start not yet
        checked (marks from index `checked` on) whose output begins with `stop_at`."""
        here = self.tell()
        for pos, _, head in self._marks[checked:]:
            if here <= pos < here + n and head.startswith(stop_at):
                return len(self._marks), pos - here
        return len(self._marks), n

    def unread(self, data: bytes) -> None:
        """Put back `data`, which must be the bytes just read; they are read again next."""
        if len(data) <= self._i:
            self._i -= len(data)  # still in the buffer
            return
        self._base = self.tell() - len(data)
        self._buf, self._i = data + self._buf[self._i :], 0

    def peek(self, n: int) -> bytes:
        while len(self._buf) - self._i < n and self._more():
            pass
        return self._buf[self._i : self._i + n]
