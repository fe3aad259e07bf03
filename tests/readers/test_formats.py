"""Every reader on real files, from the S3 server and from local paths, gz / zst / plain."""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pipeline.readers import detect_format, open_reader
from pipeline.schema import DOCUMENT_SCHEMA, QUARANTINE_SCHEMA

from .warcfiles import gzip_members, record_type


def read_all(reader) -> pa.Table:
    tables = list(reader)
    for t in tables:
        assert t.schema.equals(DOCUMENT_SCHEMA)
        assert t.num_rows <= reader.batch_size
    return pa.concat_tables(tables) if tables else DOCUMENT_SCHEMA.empty_table()


@pytest.mark.parametrize(
    "name,fmt",
    [("a.warc.gz", "warc"), ("a.warc", "warc"), ("x/CC-1.warc.wet.gz", "wet"), ("a.wet.zst", "wet"),
     ("a.jsonl.gz", "jsonl"), ("a.json.zst", "jsonl"), ("s3://b/a.ndjson", "jsonl"), ("a.parquet", "parquet")],
)
def test_detect_format(name, fmt):
    assert detect_format(name) == fmt


def test_detect_format_refuses_unknown_names():
    with pytest.raises(ValueError, match="cannot tell the format"):
        detect_format("s3://b/data.csv.gz")


def test_wet_from_s3_and_local(shared, store, bucket):
    local = shared / "corpora/warc/whirlwind.warc.wet.gz"
    uri = f"{bucket}/wet/whirlwind.warc.wet.gz"
    store.upload_file(local, uri)
    results = []
    for source in (uri, str(local)):
        reader = open_reader(source, store)
        table = read_all(reader)
        assert reader.stats["records"] == 2
        assert reader.stats["documents"] == 1 == table.num_rows
        assert reader.stats["skipped"] == {"warcinfo": 1}
        assert reader.stats["bytes_read"] == local.stat().st_size
        row = table.to_pylist()[0]
        assert row["source"] == source
        assert row["id"] == "urn:uuid:ba729a40-ff84-4085-8d48-0a5b2ee0c42d"
        assert row["url"] == "https://an.wikipedia.org/wiki/Escopete"
        assert row["crawl_timestamp"] == datetime(2024, 5, 18, 1, 58, 10, tzinfo=timezone.utc)
        assert row["text"].startswith("Escopete - Biquipedia")
        assert json.loads(row["metadata"])["cc_languages"] == "spa"
        assert row["provenance"].startswith("wet:urn:uuid:ba729a40")
        results.append((row["id"], row["text"]))
    assert results[0] == results[1]


def test_warc_from_s3_extracts_html_and_counts_the_rest(shared, store, bucket):
    local = shared / "corpora/warc/sample-0000.warc.gz"
    members = gzip_members(local.read_bytes())
    kinds = [record_type(m) for m in members]
    uri = f"{bucket}/sample-0000.warc.gz"
    store.upload_file(local, uri)
    reader = open_reader(uri, store, batch_size=8)
    table = read_all(reader)
    stats = reader.stats
    assert stats["records"] == len(members)
    assert stats["skipped"] == {"warcinfo": 1, "request": kinds.count("request"), "metadata": 1}
    # The two resource records are wget's text/plain logs: quarantined as non_html.
    assert kinds.count("resource") == 2
    assert stats["quarantined"] == {"non_html": 2}
    assert stats["documents"] == table.num_rows == kinds.count("response")
    assert len(set(table.column("id").to_pylist())) == table.num_rows
    assert all(u.startswith("https://") for u in table.column("url").to_pylist())  # <> of WARC/1.0 stripped
    assert "Semantic Scholar" in table.column("text")[0].as_py()
    assert "<div" not in "".join(table.column("text").to_pylist())
    q = reader.quarantine_table()
    assert q.schema.equals(QUARANTINE_SCHEMA) and q.num_rows == 2
    # Stable ids: a second read of the local copy gives the same ids and provenance.
    again = read_all(open_reader(str(local)))
    assert again.column("id").to_pylist() == table.column("id").to_pylist()
    assert again.column("provenance").to_pylist() == table.column("provenance").to_pylist()


def test_zstd_and_plain_warc_read_like_gzip(shared, store, bucket, tmp_path):
    raw = gzip.decompress((shared / "corpora/warc/sample-0001.warc.gz").read_bytes())
    plain = tmp_path / "s.warc"
    plain.write_bytes(raw)
    zst = tmp_path / "s.warc.zst"
    zst.write_bytes(zstandard.ZstdCompressor().compress(raw))
    store.upload_file(zst, f"{bucket}/s.warc.zst")
    expected = read_all(open_reader(str(shared / "corpora/warc/sample-0001.warc.gz")))
    assert expected.num_rows > 10
    for source in (str(plain), f"{bucket}/s.warc.zst"):
        got = read_all(open_reader(source, store))
        assert got.column("id").to_pylist() == expected.column("id").to_pylist()
        assert got.column("text").to_pylist() == expected.column("text").to_pylist()


def test_jsonl_gz_from_s3_maps_fields_and_keeps_the_rest(shared, store, bucket):
    local = shared / "corpora/web/web_sample.jsonl.gz"
    uri = f"{bucket}/web.jsonl.gz"
    store.upload_file(local, uri)
    reader = open_reader(uri, store, batch_size=500)
    sizes = []
    first = None
    for t in reader:
        sizes.append(t.num_rows)
        first = first or t.slice(0, 1).to_pylist()[0]
    with gzip.open(local, "rt") as fh:
        rows = [json.loads(line) for line in fh]
    assert sum(sizes) == len(rows) == reader.stats["documents"] == reader.stats["records"]
    assert max(sizes) == 500
    assert first["id"] == rows[0]["id"] and first["text"] == rows[0]["text"].strip()
    assert json.loads(first["metadata"]) == rows[0]["metadata"]
    assert first["provenance"] == "jsonl:0"


def test_jsonl_zst_local_with_unknown_fields(tmp_path):
    lines = [
        {"text": "first document", "url": "https://a.example/1", "lang_hint": "en", "metadata": {"k": 1}},
        {"text": "second document", "timestamp": "2024-01-02T03:04:05+00:00", "license": "cc-by", "score": 0.5},
    ]
    path = tmp_path / "d.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress("".join(json.dumps(x) + "\n" for x in lines).encode()))
    reader = open_reader(str(path))
    rows = read_all(reader).to_pylist()
    assert [r["text"] for r in rows] == ["first document", "second document"]
    assert json.loads(rows[0]["metadata"]) == {"k": 1, "lang_hint": "en"}
    assert rows[0]["url"] == "https://a.example/1"
    assert rows[1]["crawl_timestamp"] == datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert rows[1]["license"] == "cc-by" and json.loads(rows[1]["metadata"]) == {"score": 0.5}
    assert rows[0]["id"].startswith("sha1:") and rows[0]["id"] != rows[1]["id"]
    assert read_all(open_reader(str(path))).column("id").to_pylist() == [r["id"] for r in rows]


def test_parquet_from_s3_maps_columns_and_moves_extras_to_metadata(store, bucket, tmp_path):
    table = pa.table({
        "text": ["alpha text", "beta text", "gamma text"],
        "id": ["a", None, "c"],
        "url": ["https://x/a", "https://x/b", None],
        "quality": [0.1, 0.2, 0.3],
        "metadata": ['{"k": "v"}', None, None],
    })
    path = tmp_path / "in.parquet"
    pq.write_table(table, path, row_group_size=2)
    uri = f"{bucket}/in.parquet"
    store.upload_file(path, uri)
    reader = open_reader(uri, store, batch_size=2)
    rows = read_all(reader).to_pylist()
    assert [r["text"] for r in rows] == ["alpha text", "beta text", "gamma text"]
    assert rows[0]["id"] == "a" and rows[2]["id"] == "c" and rows[1]["id"].startswith("sha1:")
    assert json.loads(rows[0]["metadata"]) == {"k": "v", "quality": 0.1}
    assert json.loads(rows[1]["metadata"]) == {"quality": 0.2}
    assert [r["provenance"] for r in rows] == ["parquet:0", "parquet:1", "parquet:2"]
    assert all(r["source"] == uri for r in rows)
    assert reader.stats["records"] == 3 and reader.stats["documents"] == 3
    assert reader.stats["bytes_read"] == path.stat().st_size


def test_a_reader_reads_once(shared):
    reader = open_reader(str(shared / "corpora/warc/whirlwind.warc.wet.gz"))
    assert sum(t.num_rows for t in reader) == 1
    with pytest.raises(RuntimeError, match="already iterated"):
        list(reader)
