"""WARC (HTML responses → main-content text) and WET (conversion records → text) readers."""

from __future__ import annotations

from abc import abstractmethod
from typing import Iterator

from pipeline.readers.base import DocumentBatch, StreamReader, fallback_id, parse_timestamp
from pipeline.readers.html import (
    EXTRACTOR,
    PayloadError,
    check_html,
    decode_html,
    decode_transfer,
    extract_text,
    media_type,
    parse_http_response,
)
from pipeline.readers.streams import ByteReader
from pipeline.readers.warc_records import RecordError, WarcRecord, iter_warc_records


class _WarcFamilyReader(StreamReader):
    """Parses WARC records from the stream; subclasses turn records into documents."""

    def _parse(self, reader: ByteReader, batch: DocumentBatch) -> Iterator[None]:
        for item in iter_warc_records(reader, self.max_doc_bytes):
            self._records += 1
            if isinstance(item, RecordError):
                self.quarantine(item.offset, item.reason, item.detail, item.record_id, item.raw)
                continue
            if self._document(item, batch):
                yield

    @abstractmethod
    def _document(self, record: WarcRecord, batch: DocumentBatch) -> bool:
        """Add the record's document to `batch` if it makes one; say whether it did."""

    def _oversize(self, record: WarcRecord) -> bool:
        if record.block is not None:
            return False
        self.quarantine(record.offset, "oversize", f"{record.type} record block is {record.length} bytes, over the {self.max_doc_bytes}-byte limit (skipped unread)",
                        record.record_id, record.head)
        return True

    def _add(self, record: WarcRecord, batch: DocumentBatch, text: str, metadata: dict) -> None:
        url = record.headers.get("warc-target-uri")
        batch.add(
            id=record.record_id or fallback_id(self.uri, record.locator),
            text=text,
            url=url.strip("<>") if url else None,  # WARC/1.0 writers such as wget wrap it in <>
            crawl_timestamp=parse_timestamp(record.headers.get("warc-date")),
            provenance=f"{self.fmt}:{record.record_id or '-'}@{record.locator}",
            offset=record.offset,
            metadata=metadata,
        )


class WarcReader(_WarcFamilyReader):
    """response (and resource) records with an HTML payload → extracted main-content text."""

    fmt = "warc"
    CONTENT_TYPES = ("response", "resource")

    def _document(self, record: WarcRecord, batch: DocumentBatch) -> bool:
        kind = record.type
        if kind not in self.CONTENT_TYPES:
            self.skip(kind or "untyped")
            return False
        if self._oversize(record):
            return False
        try:
            if kind == "response":
                resp = parse_http_response(record.block)
                if resp.status is not None and not 200 <= resp.status < 300:
                    self.skip(f"http_{resp.status // 100}xx")  # redirects, errors: no page text
                    return False
                body = decode_transfer(resp, self.max_doc_bytes)
                mime, charset = media_type(resp.headers.get("content-type"))
            else:
                body = record.block
                mime, charset = media_type(record.headers.get("content-type"))
            check_html(mime, body)
            html, charset = decode_html(body, charset)
            text = extract_text(html)
        except PayloadError as exc:
            self.quarantine(record.offset, exc.reason, exc.detail, record.record_id, record.head)
            return False
        if not text:
            self.quarantine(record.offset, "empty_text", "no main-content text after HTML extraction", record.record_id, record.head)
            return False
        self._add(record, batch, text, {"content_type": mime, "charset": charset, "extractor": EXTRACTOR})
        return True


class WetReader(_WarcFamilyReader):
    """conversion records (plain text Common Crawl extracted) → documents."""

    fmt = "wet"

    def _document(self, record: WarcRecord, batch: DocumentBatch) -> bool:
        kind = record.type
        if kind != "conversion":
            self.skip(kind or "untyped")
            return False
        if self._oversize(record):
            return False
        try:
            text = record.block.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            self.quarantine(record.offset, "invalid_utf8", f"text is not valid UTF-8 at byte {exc.start} ({exc.reason})", record.record_id, record.head)
            return False
        if not text:
            self.quarantine(record.offset, "empty_text", "conversion record has no text", record.record_id, record.head)
            return False
        metadata = {}
        if refers := record.headers.get("warc-refers-to"):
            metadata["warc_refers_to"] = refers.strip("<>")
        if langs := record.headers.get("warc-identified-content-language"):
            metadata["cc_languages"] = langs
        self._add(record, batch, text, metadata)
        return True
