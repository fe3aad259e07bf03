"""Hostile and careless input, one reader behaviour per test: a wrong WARC Content-Length is
resynchronised at the next record; control characters and CR line breaks are normalised in
every reader; deep JSON, damaged Parquet pages, empty inputs, odd charsets and floods of bad
lines become quarantine rows with reasons, never an exception out of the reader."""

from __future__ import annotations

import gzip
import io
import json
import re
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.readers import open_reader

from .test_quarantine import first_response, read
from .warcfiles import gz, gzip_members, offsets, response_record, warc_record, write

RAW_WARC = re.compile(r"WARC-Record-ID|WARC/1\.[01]|HTTP/1\.[01] \d{3}")


@pytest.fixture(scope="module")
def sample(shared):
    members = gzip_members((shared / "corpora/warc/sample-0000.warc.gz").read_bytes())
    reader, table, _ = read(str(shared / "corpora/warc/sample-0000.warc.gz"))
    return members, reader.stats, table.column("id").to_pylist()


def with_length(member: bytes, delta: int) -> bytes:
    """A record (decompressed) whose Content-Length is off by `delta`."""
    record = zlib.decompress(member, 31)
    n = int(re.search(rb"Content-Length: (\d+)", record).group(1))
    return record.replace(f"Content-Length: {n}".encode(), f"Content-Length: {n + delta}".encode(), 1)


def record_id(member: bytes) -> str:
    return re.search(rb"WARC-Record-ID: <(.*?)>", zlib.decompress(member, 31)).group(1).decode()


@pytest.mark.parametrize("delta", [60_000, 10**12, 5, -200], ids=["swallows-next-pages", "past-the-file-and-limit", "a-few-bytes-over", "short"])
def test_wrong_content_length_in_member_per_record_gzip(sample, tmp_path, delta):
    members, clean, ids = sample
    k = first_response(members, 6)
    bad = list(members)
    bad[k] = gz(with_length(members[k], delta))
    path, offs = write(tmp_path / "cl.warc.gz", bad)
    reader, table, q = read(str(path))
    assert [(r["reason"], r["offset"], r["record_id"]) for r in q if r["reason"] != "non_html"] == [("bad_content_length", offs[k], record_id(members[k]))]
    assert "Content-Length" in q[0]["detail"] or any("Content-Length" in r["detail"] for r in q)
    assert table.column("id").to_pylist() == [i for i in ids if i != record_id(members[k])]
    assert not any(RAW_WARC.search(t) for t in table.column("text").to_pylist())
    s = reader.stats
    assert s["records"] == clean["records"] == s["documents"] + sum(s["skipped"].values()) + sum(s["quarantined"].values())


@pytest.mark.parametrize("layout", ["plain", "one-gzip-member", "zstd"])
@pytest.mark.parametrize("delta", [60_000, 3_000, -200])
def test_wrong_content_length_without_member_boundaries(sample, tmp_path, layout, delta):
    """No gzip member per record to stop at: the block read is searched for the next record."""
    import zstandard

    members, clean, ids = sample
    k = first_response(members, 6)
    records = [zlib.decompress(m, 31) for m in members]
    records[k] = with_length(members[k], delta)
    raw = b"".join(records)
    data = {"plain": raw, "one-gzip-member": gzip.compress(raw, mtime=0), "zstd": zstandard.ZstdCompressor().compress(raw)}[layout]
    path = tmp_path / "cl.warc"
    path.write_bytes(data)
    reader, table, q = read(str(path), fmt="warc")
    offset = 0 if layout == "one-gzip-member" else offsets(records)[k]  # a gzip offset is the member's
    assert [(r["reason"], r["offset"]) for r in q if r["reason"] != "non_html"] == [("bad_content_length", offset)]
    assert table.column("id").to_pylist() == [i for i in ids if i != record_id(members[k])]
    assert not any(RAW_WARC.search(t) for t in table.column("text").to_pylist())


def test_a_damaged_member_after_a_whole_record_costs_only_itself(sample, tmp_path):
    members, clean, ids = sample
    k = first_response(members, 6)
    bad = list(members)
    bad[k + 1] = members[k + 1][:20]  # the member after a response is cut short
    path, offs = write(tmp_path / "d.warc.gz", bad)
    reader, table, q = read(str(path))
    assert record_id(members[k]) in table.column("id").to_pylist()
    assert ("truncated_gzip", offs[k + 1]) in [(r["reason"], r["offset"]) for r in q]


def test_crlf_and_control_characters_are_normalised_in_every_reader(tmp_path, shared):
    dirty = "first line\r\nsecond\rthird\x00 with NUL,\x1b[31m escape, \x85 C1\ttab\x0c end"
    expected = "first line\nsecond\nthird with NUL,[31m escape,  C1\ttab end"
    control_only = "\x00\x01\r\n\x7f"

    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(json.dumps({"id": "a", "text": dirty}) + "\n" + json.dumps({"id": "b", "text": control_only}) + "\n"
                     + '{"id": "c", "text": "raw\ttab and raw\rCR in a string"}\n')
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": [dirty, control_only, "plain"]}), parquet)
    wet = tmp_path / "c.warc.wet"
    wet.write_bytes(b"".join(warc_record({"WARC-Type": "conversion", "WARC-Record-ID": f"<{n}>"}, text.encode()) for n, text in (("a", dirty), ("b", control_only))))
    warc = tmp_path / "c.warc.gz"
    html = f"<html><body><article><p>{dirty}</p><p>{'A paragraph of ordinary words. ' * 20}</p></article></body></html>".encode()
    warc.write_bytes(gz(response_record("aaaaaaaa-0000-0000-0000-000000000000", "https://x.example/", "text/html; charset=utf-8", html)))

    for path, fmt in ((jsonl, "jsonl"), (parquet, "parquet"), (wet, "wet")):
        reader, table, q = read(str(path), fmt=fmt)
        texts = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
        assert texts["a"] == expected, fmt
        assert [(r["reason"], r["record_id"]) for r in q] == [("empty_text", "b")], fmt
    assert texts_of(str(jsonl))[-1] == "raw\ttab and raw\nCR in a string"
    (text,) = texts_of(str(warc))
    assert "\r" not in text and "\x00" not in text and "\x1b" not in text and "third with NUL" in text


def texts_of(source: str) -> list[str]:
    return read(source)[1].column("text").to_pylist()


def test_crlf_web_pages_read_like_lf_pages(shared, tmp_path):
    """The same pages with CRLF line ends give the same documents (the filters then agree)."""
    with gzip.open(shared / "corpora/web/web_sample.jsonl.gz", "rt") as fh:
        rows = [json.loads(line) for _, line in zip(range(300), fh)]
    lf, crlf = tmp_path / "lf.jsonl", tmp_path / "crlf.jsonl"
    lf.write_text("".join(json.dumps(r) + "\n" for r in rows))
    crlf.write_text("".join(json.dumps({**r, "text": r["text"].replace("\n", "\r\n")}) + "\r\n" for r in rows))
    assert texts_of(str(crlf)) == texts_of(str(lf))


def test_json_nested_too_deep_and_other_odd_json(tmp_path):
    lines = [
        "\ufeff" + json.dumps({"id": "bom", "text": "a BOM before the first line"}),
        "[" * 100_000 + "]" * 100_000,
        json.dumps({"id": "deep-meta", "text": "t", "metadata": {"m": None}}).replace("null", "[" * 5000 + "]" * 5000),
        json.dumps({"id": "nan", "text": "score is NaN"}).replace("}", ', "score": NaN}'),
        json.dumps({"id": "surrogate-url", "text": "fine text"}).replace("}", ', "url": "https://x/\\udc00"}'),
        json.dumps({"id": {"nested": 1}, "text": "an object as id"}),
        json.dumps({"id": "ok", "text": "fine"}),
    ]
    path = tmp_path / "odd.jsonl"
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + b"\n")
    reader, table, q = read(str(path))
    assert [r["reason"] for r in q] == ["bad_json", "bad_json", "invalid_utf8"]
    assert "too deep" in q[0]["detail"] and "too deep" in q[1]["detail"]
    rows = {r["text"]: r for r in table.to_pylist()}
    assert rows["a BOM before the first line"]["id"] == "bom"
    assert json.loads(rows["score is NaN"]["metadata"]) == {"score": None}
    assert json.loads(rows["an object as id"]["metadata"]) == {"id": {"nested": 1}}
    assert rows["an object as id"]["id"].startswith("sha1:")
    assert reader.stats["records"] == len(lines)


@pytest.mark.parametrize("data,detail", [
    (b"", "0 bytes"), (gzip.compress(b""), "(0 decompressed)"), (b"\n\n \n", "hold no record"),
], ids=["zero-bytes", "empty-gzip", "blank-lines"])
def test_an_input_with_no_record_is_one_empty_input_row(tmp_path, data, detail):
    path = tmp_path / "e.jsonl.gz"
    path.write_bytes(data)
    reader, table, q = read(str(path))
    assert table is None and [r["reason"] for r in q] == ["empty_input"] and detail in q[0]["detail"]
    assert reader.stats["records"] == 1


def parquet_bytes(table: pa.Table, **kwargs) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kwargs)
    return buf.getvalue()


def test_parquet_corrupt_page_costs_its_row_group(tmp_path, store, bucket):
    table = pa.table({"id": [str(i) for i in range(3000)], "text": [f"document {i} " * 20 for i in range(3000)]})
    data = bytearray(parquet_bytes(table, row_group_size=1000))
    meta = pq.ParquetFile(io.BytesIO(bytes(data))).metadata
    column = meta.row_group(1).column(meta.schema.names.index("text"))
    page = column.dictionary_page_offset or column.data_page_offset
    data[page + 3 : page + 19] = b"\xff" * 16  # the page header no longer parses
    store.put_bytes(f"{bucket}/p.parquet", bytes(data))
    reader, out, q = read(f"{bucket}/p.parquet", store, batch_size=400)
    assert [(r["reason"], r["offset"]) for r in q] == [("corrupt_parquet", 1000)]
    assert "rows 1000..1999" in q[0]["detail"]
    assert out.column("id").to_pylist() == [str(i) for i in range(1000)] + [str(i) for i in range(2000, 3000)]
    assert reader.stats["records"] == 3000 and reader.stats["quarantined"] == {"corrupt_parquet": 1000}  # rows lost, in one row


def test_parquet_damage_classes(tmp_path):
    good = parquet_bytes(pa.table({"text": ["one", "two"]}))
    invalid = pa.Array.from_buffers(pa.string(), 3, pa.array([b"fine", b"bad \xff", b"also fine"], pa.binary()).buffers())
    cases = {
        "truncated": (good[: len(good) // 2], ["corrupt_parquet"], []),
        "junk": (b"PAR1 this is not parquet", ["corrupt_parquet"], []),
        "no-rows": (parquet_bytes(pa.table({"text": pa.array([], pa.string())})), ["empty_input"], []),
        "duplicate-columns": (parquet_bytes(pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["text", "text"])), ["wrong_schema"], []),
        "text-is-a-list": (parquet_bytes(pa.table({"text": [["a", "b"]]})), ["wrong_schema"], []),
        "invalid-utf8": (parquet_bytes(pa.table({"text": invalid})), ["invalid_utf8"], ["fine", "also fine"]),
        "invalid-utf8-elsewhere": (parquet_bytes(pa.table({"text": ["x", "y", "z"], "note": invalid})), ["invalid_utf8"], ["x", "z"]),
        "struct-id": (parquet_bytes(pa.table({"text": ["kept"], "id": [{"a": 1}]})), [], ["kept"]),
    }
    for name, (data, reasons, texts) in cases.items():
        path = tmp_path / f"{name}.parquet"
        path.write_bytes(data)
        reader, table, q = read(str(path))
        assert [r["reason"] for r in q] == reasons, name
        assert (table.column("text").to_pylist() if table is not None else []) == texts, name
    struct_row = read(str(tmp_path / "struct-id.parquet"))[1].to_pylist()[0]
    assert struct_row["id"].startswith("sha1:") and json.loads(struct_row["metadata"]) == {"id": {"a": 1}}


@pytest.mark.parametrize("charset,body,reason", [
    ("rot13", b"<html><body><p>plain words here</p></body></html>", None),
    ("utf-7", b"<html><body><p>+2AA- words</p></body></html>", None),
    ("unicode-escape", b"<html><body><p>\\ud800 words</p></body></html>", None),
    ("utf-16-le", b"\x00\xd8<\x00", "invalid_encoding"),
])
def test_odd_charsets_never_fail_the_batch(tmp_path, charset, body, reason):
    record = response_record("bbbbbbbb-0000-0000-0000-000000000000", "https://x.example/", f"text/html; charset={charset}", body)
    path = tmp_path / "cs.warc.gz"
    path.write_bytes(gz(record))
    reader, table, q = read(str(path))
    assert [r["reason"] for r in q] == ([reason] if reason else [])
    if reason is None:
        assert "words" in table.column("text")[0].as_py()


def test_a_flood_of_bad_lines_keeps_exact_counts_in_bounded_memory(tmp_path, monkeypatch):
    from pipeline.readers import base

    monkeypatch.setattr(base, "MAX_QUARANTINE_ROWS", 50)
    path = tmp_path / "flood.jsonl"
    path.write_bytes(b"not json\n" * 2000 + b'{"text": "the one document"}\n')
    reader, table, q = read(str(path))
    assert len(q) == 50 and reader.stats["quarantined"] == {"bad_json": 2000}
    assert reader.stats["quarantine_rows_not_stored"] == 1950
    assert table.column("text").to_pylist() == ["the one document"]
