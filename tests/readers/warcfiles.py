"""Building WARC test inputs from real records: split a file into its gzip members, change
one, and put it back together, knowing every member's offset."""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path


def gzip_members(data: bytes) -> list[bytes]:
    """The compressed bytes of each gzip member, in order."""
    members, pos = [], 0
    while pos < len(data):
        dec = zlib.decompressobj(31)
        dec.decompress(data[pos:])
        size = len(data) - pos - len(dec.unused_data)
        members.append(data[pos : pos + size])
        pos += size
    return members


def offsets(members: list[bytes]) -> list[int]:
    out, pos = [], 0
    for m in members:
        out.append(pos)
        pos += len(m)
    return out


def record_type(member: bytes) -> str:
    return re.search(rb"WARC-Type: (\w+)", zlib.decompress(member, 31)).group(1).decode()


def record_length(member: bytes) -> int:
    return int(re.search(rb"Content-Length: (\d+)", zlib.decompress(member, 31)).group(1))


def warc_record(headers: dict[str, str], block: bytes) -> bytes:
    head = "WARC/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + f"Content-Length: {len(block)}\r\n\r\n"
    return head.encode() + block + b"\r\n\r\n"


def http_response(content_type: str, body: bytes) -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def response_record(record_id: str, url: str, content_type: str, body: bytes) -> bytes:
    return warc_record(
        {"WARC-Type": "response", "WARC-Record-ID": f"<urn:uuid:{record_id}>", "WARC-Date": "2024-04-25T16:24:44Z",
         "WARC-Target-URI": url, "Content-Type": "application/http; msgtype=response"},
        http_response(content_type, body),
    )


def write(path: Path, members: list[bytes]) -> tuple[Path, list[int]]:
    path.write_bytes(b"".join(members))
    return path, offsets(members)


def gz(record: bytes) -> bytes:
    return gzip.compress(record, mtime=0)
