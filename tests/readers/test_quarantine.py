"""One test per malformed-input class: the bad record becomes a quarantine row with its reason
and offset, and every other record still comes through with the right counts."""

from __future__ import annotations

import gzip
import json
import re
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.readers import open_reader

from .warcfiles import gz, gzip_members, offsets, record_length, record_type, response_record, warc_record, write


def read(source, store=None, **kwargs):
    reader = open_reader(source, store, **kwargs)
    tables = list(reader)
    table = pa.concat_tables(tables) if tables else None
    return reader, table, reader.quarantine_table().to_pylist()


@pytest.fixture(scope="module")
def sample(shared):
    """sample-0000.warc.gz as gzip members, and what a clean read of it gives."""
    members = gzip_members((shared / "corpora/warc/sample-0000.warc.gz").read_bytes())
    reader, table, _ = read(str(shared / "corpora/warc/sample-0000.warc.gz"))
    return members, reader.stats, table.column("id").to_pylist()


def first_response(members: list[bytes], after: int = 0) -> int:
    return next(i for i, m in enumerate(members) if i >= after and record_type(m) == "response")


def test_truncated_gzip_member_in_the_middle(sample, tmp_path, store, bucket):
    members, clean, ids = sample
    k = first_response(members, 10)
    bad = list(members)
    bad[k] = members[k][: len(members[k]) // 2]
    path, offs = write(tmp_path / "t.warc.gz", bad)
    uri = f"{bucket}/t.warc.gz"
    store.upload_file(path, uri)
    reader, table, q = read(uri, store)
    assert [(r["reason"], r["offset"]) for r in q] == [("truncated_gzip", offs[k])] + [("non_html", o) for o in offs if o > offs[k]][-2:]
    assert reader.stats["quarantined"] == {"truncated_gzip": 1, "non_html": 2}
    assert reader.stats["documents"] == clean["documents"] - 1 == table.num_rows
    lost = zlib.decompressobj(31).decompress(members[k])
    lost_id = re.search(rb"WARC-Record-ID: <(.*?)>", lost).group(1).decode()
    assert table.column("id").to_pylist() == [i for i in ids if i != lost_id]


def test_truncated_last_member(sample, tmp_path):
    members, clean, _ = sample
    bad = members[:-1] + [members[-1][:-20]]
    path, offs = write(tmp_path / "t.warc.gz", bad)
    reader, table, q = read(str(path))
    assert q[-1]["reason"] == "truncated_gzip" and q[-1]["offset"] == offs[-1]
    assert reader.stats["documents"] == clean["documents"]  # the last record is a metadata record


@pytest.mark.parametrize("corrupt", [
    lambda rec: rec.replace(b"Content-Length: ", b"Content-Length: x", 1),
    lambda rec: rec.replace(b"WARC/1.0\r\n", b"WRAC/1.0\r\n", 1),
    lambda rec: rec.replace(b"WARC-Type: response\r\n", b"WARC-Type response\r\n", 1),
], ids=["length", "version", "colon"])
def test_broken_warc_header(sample, tmp_path, corrupt):
    members, clean, _ = sample
    k = first_response(members, 5)
    bad = list(members)
    bad[k] = gz(corrupt(zlib.decompress(members[k], 31)))
    path, offs = write(tmp_path / "h.warc.gz", bad)
    reader, table, q = read(str(path))
    rows = [r for r in q if r["reason"] == "bad_warc_header"]
    assert len(rows) == 1 and rows[0]["offset"] == offs[k]
    assert rows[0]["snippet"]
    assert reader.stats["quarantined"] == {"bad_warc_header": 1, "non_html": 2}
    assert reader.stats["documents"] == clean["documents"] - 1 == table.num_rows


def test_invalid_utf8_in_wet(shared, tmp_path):
    members = gzip_members((shared / "corpora/warc/whirlwind.warc.wet.gz").read_bytes())
    conversion = zlib.decompress(members[1], 31)
    head, _, block = conversion.partition(b"\r\n\r\n")
    block = block[:-4]
    broken = block[:100] + b"\xff\xfe" + block[100:]
    bad_head = head.replace(f"Content-Length: {len(block)}".encode(), f"Content-Length: {len(broken)}".encode())
    bad_head = bad_head.replace(b"ba729a40", b"00000000")
    path, offs = write(tmp_path / "u.warc.wet.gz", [members[0], gz(bad_head + b"\r\n\r\n" + broken + b"\r\n\r\n"), members[1]])
    reader, table, q = read(str(path))
    assert [(r["reason"], r["offset"], r["record_id"]) for r in q] == [("invalid_utf8", offs[1], "urn:uuid:00000000-ff84-4085-8d48-0a5b2ee0c42d")]
    assert "byte 100" in q[0]["detail"]
    assert reader.stats == {**reader.stats, "records": 3, "documents": 1, "skipped": {"warcinfo": 1}, "quarantined": {"invalid_utf8": 1}}
    assert table.column("id").to_pylist() == ["urn:uuid:ba729a40-ff84-4085-8d48-0a5b2ee0c42d"]


def test_invalid_utf8_and_bad_json_and_missing_text_in_jsonl(tmp_path, store, bucket):
    good = [json.dumps({"id": f"d{i}", "text": f"document number {i}"}).encode() + b"\n" for i in range(4)]
    bad_utf8 = b'{"id": "u", "text": "caf\xe9"}\n'
    bad_json = b'{"id": "j", "text": "unterminated}\n'
    surrogate = b'{"id": "s", "text": "lone \\ud800 surrogate"}\n'
    no_text = b'{"id": "n", "body": "x"}\n'
    lines = [good[0], bad_utf8, good[1], bad_json, good[2], surrogate, no_text, b"\n", good[3]]
    data = b"".join(lines)
    path = tmp_path / "b.jsonl.gz"
    path.write_bytes(gzip.compress(data))
    store.upload_file(path, f"{bucket}/b.jsonl.gz")
    reader, table, q = read(f"{bucket}/b.jsonl.gz", store)
    starts = offsets(lines)
    assert [(r["reason"], r["offset"]) for r in q] == [
        ("invalid_utf8", starts[1]), ("bad_json", starts[3]), ("invalid_utf8", starts[5]), ("missing_text", starts[6])]
    assert table.column("id").to_pylist() == ["d0", "d1", "d2", "d3"]
    assert reader.stats["records"] == 8 and reader.stats["documents"] == 4


def test_non_html_payload(sample, tmp_path):
    members, clean, _ = sample
    pdf = response_record("11111111-2222-3333-4444-555555555555", "https://x.example/a.pdf", "application/pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n")
    bad = members[:3] + [gz(pdf)] + members[3:]
    path, offs = write(tmp_path / "p.warc.gz", bad)
    reader, table, q = read(str(path))
    pdf_rows = [r for r in q if r["record_id"] == "urn:uuid:11111111-2222-3333-4444-555555555555"]
    assert [(r["reason"], r["offset"]) for r in pdf_rows] == [("non_html", offs[3])]
    assert "application/pdf" in pdf_rows[0]["detail"]
    assert reader.stats["documents"] == clean["documents"] == table.num_rows
    assert reader.stats["quarantined"] == {"non_html": 3}


def test_oversize_is_skipped_unread(sample, shared):
    members, clean, _ = sample
    limit = 30_000
    big = [(i, record_length(m)) for i, m in enumerate(members) if record_type(m) == "response" and record_length(m) > limit]
    assert 0 < len(big) < clean["documents"]
    offs = offsets(members)
    reader, table, q = read(str(shared / "corpora/warc/sample-0000.warc.gz"), max_doc_bytes=limit)
    rows = [r for r in q if r["reason"] == "oversize"]
    assert [r["offset"] for r in rows] == [offs[i] for i, _ in big]
    assert all(f"{n} bytes" in r["detail"] for r, (_, n) in zip(rows, big))
    assert reader.stats["documents"] == clean["documents"] - len(big) == table.num_rows


def test_oversize_jsonl_line(tmp_path):
    lines = [b'{"text": "small"}\n', b'{"text": "' + b"x" * 5000 + b'"}\n', b'{"text": "after"}\n']
    path = tmp_path / "o.jsonl"
    path.write_bytes(b"".join(lines))
    reader, table, q = read(str(path), max_doc_bytes=1000)
    assert [(r["reason"], r["offset"]) for r in q] == [("oversize", len(lines[0]))]
    assert table.column("text").to_pylist() == ["small", "after"]


def test_empty_text_after_extraction(sample, tmp_path):
    members, clean, _ = sample
    empty = response_record("66666666-2222-3333-4444-555555555555", "https://x.example/", "text/html; charset=utf-8",
                            b"<html><head><script>var a=1;</script></head><body>  </body></html>")
    bad = members[:5] + [gz(empty)] + members[5:]
    path, offs = write(tmp_path / "e.warc.gz", bad)
    reader, table, q = read(str(path))
    rows = [r for r in q if r["reason"] == "empty_text"]
    assert [r["offset"] for r in rows] == [offs[5]]
    assert reader.stats["documents"] == clean["documents"] == table.num_rows


def test_parquet_without_text_is_one_wrong_schema_row(tmp_path, store, bucket):
    path = tmp_path / "w.parquet"
    pq.write_table(pa.table({"body": ["a", "b"], "id": ["1", "2"]}), path)
    store.upload_file(path, f"{bucket}/w.parquet")
    reader, table, q = read(f"{bucket}/w.parquet", store)
    assert table is None
    assert [(r["reason"], r["offset"]) for r in q] == [("wrong_schema", 0)]
    assert "no `text` column" in q[0]["detail"]
    assert reader.stats["quarantined"] == {"wrong_schema": 2} and reader.stats["documents"] == 0  # counted by rows lost


def test_parquet_bad_rows_are_quarantined_by_row(tmp_path):
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"text": ["ok one", None, "  ", "y" * 50, "ok two"], "id": ["a", "b", "c", "d", "e"]}), path)
    reader, table, q = read(str(path), max_doc_bytes=20, batch_size=2)
    assert [(r["reason"], r["offset"], r["record_id"]) for r in q] == [
        ("empty_text", 1, "b"), ("empty_text", 2, "c"), ("oversize", 3, "d")]
    assert table.column("id").to_pylist() == ["a", "e"]
    assert reader.stats["records"] == 5 and reader.stats["documents"] == 2


def test_garbage_between_members_and_a_plain_truncated_record(sample, tmp_path):
    members, clean, _ = sample
    bad = members[:4] + [b"\x00" * 64, b"not gzip at all\n"] + members[4:]
    path, offs = write(tmp_path / "g.warc.gz", bad)
    reader, table, q = read(str(path))
    assert [(r["reason"], r["offset"]) for r in q if r["reason"] != "non_html"] == [("truncated_gzip", offs[5])]
    assert reader.stats["documents"] == clean["documents"]

    plain = tmp_path / "p.warc"
    record = warc_record({"WARC-Type": "conversion"}, b"some text")
    plain.write_bytes(record + record[:-10])
    reader = open_reader(str(plain), fmt="wet")
    assert sum(t.num_rows for t in reader) == 1
    assert [(r["reason"], r["offset"]) for r in reader.quarantine_table().to_pylist()] == [("truncated_record", len(record))]


def test_truncated_zstd_keeps_what_came_before(tmp_path):
    import zstandard

    import random

    rng = random.Random(7)  # varied text, so the frame spans many zstd blocks
    lines = b"".join(json.dumps({"id": f"d{i}", "text": " ".join(f"{rng.getrandbits(40):x}" for _ in range(300))}).encode() + b"\n" for i in range(200))
    data = zstandard.ZstdCompressor().compress(lines)
    path = tmp_path / "t.jsonl.zst"
    path.write_bytes(data[: len(data) * 3 // 4])
    reader, table, q = read(str(path))
    assert [r["reason"] for r in q][-1] == "corrupt_zstd"
    assert 0 < table.num_rows < 200
    assert table.column("id").to_pylist() == [f"d{i}" for i in range(table.num_rows)]


def test_random_damage_never_crashes_and_every_record_is_accounted_for(shared, tmp_path):
    import random

    import zstandard

    data = (shared / "corpora/warc/sample-0000.warc.gz").read_bytes()
    raw = gzip.decompress(data)
    rng = random.Random(1234)
    path = tmp_path / "f.warc.gz"
    for _ in range(12):
        damaged = bytearray(rng.choice([data, raw, zstandard.ZstdCompressor().compress(raw)]))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(damaged))
            if rng.random() < 0.5:
                damaged[at] ^= 0xFF
            else:
                del damaged[at : at + rng.randint(1, 2000)]
        path.write_bytes(damaged)
        for fmt in ("warc", "wet"):
            reader = open_reader(str(path), fmt=fmt)
            docs = sum(t.num_rows for t in reader)
            s = reader.stats
            assert s["records"] == docs + sum(s["skipped"].values()) + sum(s["quarantined"].values())
            assert reader.quarantine_table().num_rows == sum(s["quarantined"].values())
