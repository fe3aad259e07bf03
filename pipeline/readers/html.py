"""From an HTTP response block to main-content text.

Extractor: Resiliparse `extract_plain_text(main_content=True)`. Measured against trafilatura
on the 500 WCXB pages (docs/extraction.md, `bench/readers.py --compare-extractors`): about
12x the speed at comparable quality, so it is the only extractor here.
"""

from __future__ import annotations

import codecs
import re
import zlib
from dataclasses import dataclass

from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.html import HTMLTree

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# Python text codecs that are escapes or transfer syntaxes, not encodings a web page declares:
# decoding with them interprets markup (`\\u...`, `+...-`) and can make lone surrogates.
NOT_PAGE_ENCODINGS = frozenset({"utf-7", "unicode-escape", "raw-unicode-escape", "punycode", "idna", "undefined"})
EXTRACTOR = "resiliparse-main"
_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]{1,40})""", re.I)


class PayloadError(Exception):
    """The payload cannot become a document; `reason` is the quarantine code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class HttpResponse:
    status: int | None
    headers: dict[str, str]  # lower-cased names
    body: bytes


def parse_http_response(block: bytes) -> HttpResponse:
    end = block.find(b"\r\n\r\n")
    sep = 4
    if end < 0:
        end, sep = block.find(b"\n\n"), 2
    if end < 0 or not block.startswith(b"HTTP/"):
        raise PayloadError("bad_http", f"response block does not start with an HTTP status line and headers: {block[:40]!r}")
    lines = block[:end].split(b"\n")
    parts = lines[0].split(None, 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if colon:
            headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    body = block[end + sep :]
    return HttpResponse(status, headers, body)


def decode_transfer(resp: HttpResponse, max_bytes: int) -> bytes:
    """Undo chunked transfer and gzip/deflate content encodings (most crawlers store them
    decoded, some do not); bounded by `max_bytes` of output."""
    body = resp.body
    if "chunked" in resp.headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    encoding = resp.headers.get("content-encoding", "").lower().strip()
    if encoding in ("", "identity", "none"):
        return body
    if encoding in ("gzip", "x-gzip", "deflate"):
        dec = zlib.decompressobj(47 if encoding != "deflate" else 15)  # 47: gzip or zlib header
        try:
            out = dec.decompress(body, max_bytes + 1)
        except zlib.error as exc:
            raise PayloadError("bad_content_encoding", f"Content-Encoding {encoding} payload does not decompress: {exc}") from exc
        if len(out) > max_bytes:
            raise PayloadError("oversize", f"decompressed payload exceeds {max_bytes} bytes")
        return out
    raise PayloadError("bad_content_encoding", f"unsupported Content-Encoding {encoding!r}")


def _dechunk(body: bytes) -> bytes:
    out, pos = [], 0
    while pos < len(body):
        nl = body.find(b"\r\n", pos)
        if nl < 0:
            break
        try:
            size = int(body[pos:nl].split(b";")[0].strip() or b"0", 16)
        except ValueError:
            return body  # not really chunked: keep the bytes as they are
        if size == 0:
            break
        out.append(body[nl + 2 : nl + 2 + size])
        pos = nl + 2 + size + 2
    return b"".join(out)


def media_type(content_type: str | None) -> tuple[str | None, str | None]:
    """("text/html", "utf-8") from a Content-Type value."""
    if not content_type:
        return None, None
    mime, _, params = content_type.partition(";")
    charset = None
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            charset = value.strip().strip("\"'") or None
    return mime.strip().lower() or None, charset


def looks_like_html(body: bytes) -> bool:
    head = body[:1024].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<html" in head or b"<head" in head


def check_html(mime: str | None, body: bytes) -> None:
    if mime in HTML_TYPES:
        return
    if mime is None and looks_like_html(body):
        return
    raise PayloadError("non_html", f"payload is {mime or 'untyped and not HTML'}, not HTML")


def decode_html(body: bytes, http_charset: str | None) -> tuple[str, str]:
    """Decode with the declared charset (HTTP header, else <meta>, else UTF-8), strictly: a
    page that does not decode as it declares is quarantined rather than guessed at. Labels
    that name no text encoding (unknown, or codecs such as rot13/base64) fall back to UTF-8,
    as browsers do."""
    charset = http_charset
    if not charset:
        m = _META_CHARSET.search(body, 0, 4096)
        charset = m.group(1).decode("ascii") if m else None
    name = "utf-8"
    if charset:
        try:
            codec = codecs.lookup(charset)
        except LookupError:
            codec = None
        if codec is not None and codec._is_text_encoding and codec.name not in NOT_PAGE_ENCODINGS:
            name = codec.name
    if name in ("ascii", "us-ascii"):
        name = "utf-8"  # pages labelled ASCII are UTF-8 in practice (a superset)
    try:
        html = body.decode(name)
        if name != "utf-8":
            html.encode("utf-8")  # a lone surrogate from any codec would fail the whole batch later
    except UnicodeError as exc:
        where = f"at byte {exc.start} ({exc.reason})" if isinstance(exc, UnicodeDecodeError) else f"({exc})"
        raise PayloadError("invalid_utf8" if name == "utf-8" else "invalid_encoding", f"payload is not valid {name} {where}") from exc
    return html, name


def extract_text(html: str) -> str:
    return extract_plain_text(HTMLTree.parse(html), main_content=True).strip()
