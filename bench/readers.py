"""Reader throughput from the embedded S3 server, and (--compare-extractors) the HTML
extractor comparison behind docs/extraction.md.

    .venv/bin/python bench/readers.py [--wet-copies 3000] [--compare-extractors]

Figures are CPU seconds of this process (resource.getrusage self + reaped children); the S3
server is a separate service whose CPU is not counted. Inputs: WARC with HTML extraction, a
WET file, the web sample as JSONL and as Parquet ("uncompressed" MB for Parquet: its text
bytes). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.readers import open_reader  # noqa: E402
from pipeline.readers.html import extract_text, parse_http_response  # noqa: E402
from pipeline.readers.streams import ByteReader, CountingStream, decompressed_events  # noqa: E402
from pipeline.readers.warc_records import iter_warc_records  # noqa: E402
from pipeline.s3server import start_s3_server  # noqa: E402
from pipeline.storage import ObjectStore  # noqa: E402

SHARED = Path(os.environ.get("TOKENMILL_SHARED", Path(__file__).resolve().parents[2] / "shared"))
WCXB = SHARED / "corpora/warc/wcxb-dev-500.warc.gz"
WET = SHARED / "corpora/warc/whirlwind.warc.wet.gz"
WEB = SHARED / "corpora/web/web_sample.jsonl.gz"


def cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def replicated_wet(copies: int) -> bytes:
    """The whirlwind WET file with its conversion record repeated `copies` times (new record
    ids), one gzip member per record like Common Crawl's."""
    raw = gzip.decompress(WET.read_bytes())
    records = raw.split(b"WARC/1.0\r\n")[1:]
    info, conversion = b"WARC/1.0\r\n" + records[0], b"WARC/1.0\r\n" + records[1]
    out = [gzip.compress(info, 6, mtime=0)]
    for i in range(copies):
        rec = re.sub(rb"urn:uuid:[0-9a-f-]+>", f"urn:uuid:{i:08d}-0000-0000-0000-000000000000>".encode(), conversion, count=1)
        out.append(gzip.compress(rec, 6, mtime=0))
    return b"".join(out)


def web_parquet(path: Path) -> int:
    """The web sample as a Parquet file (id, text, url, metadata JSON); returns its text bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with gzip.open(WEB, "rt") as fh:
        rows = [json.loads(line) for line in fh]
    table = pa.table({
        "id": [r["id"] for r in rows],
        "text": [r["text"] for r in rows],
        "url": [r.get("url") for r in rows],
        "metadata": [json.dumps(r.get("metadata")) for r in rows],
    })
    pq.write_table(table, path, row_group_size=1000)
    return sum(len(r["text"].encode()) for r in rows)


def measure(uri: str, store: ObjectStore, uncompressed: int) -> dict:
    start_cpu, start_wall = cpu(), time.perf_counter()
    reader = open_reader(uri, store)
    docs = sum(t.num_rows for t in reader)
    secs = cpu() - start_cpu
    stats = reader.stats
    return {
        "docs": docs,
        "cpu_s": round(secs, 3),
        "wall_s": round(time.perf_counter() - start_wall, 3),
        "docs_per_cpu_s": round(docs / secs, 1),
        "compressed_mb_per_cpu_s": round(stats["bytes_read"] / 1e6 / secs, 2),
        "uncompressed_mb_per_cpu_s": round(uncompressed / 1e6 / secs, 2),
        "quarantined": stats["quarantined"],
    }


def throughput(wet_copies: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-readers-") as tmp:
        server = start_s3_server(Path(tmp) / "s3")
        try:
            store = ObjectStore(server.settings)
            store.ensure_bucket("bench")
            wet = Path(tmp) / "replicated.warc.wet.gz"
            wet.write_bytes(replicated_wet(wet_copies))
            parquet = Path(tmp) / "web_sample.parquet"
            parquet_text = web_parquet(parquet)
            inputs = {"warc_extract": (WCXB, "s3://bench/wcxb-dev-500.warc.gz"),
                      "wet": (wet, "s3://bench/replicated.warc.wet.gz"),
                      "jsonl": (WEB, "s3://bench/web_sample.jsonl.gz"),
                      "parquet": (parquet, "s3://bench/web_sample.parquet")}
            out = {}
            for name, (local, uri) in inputs.items():
                store.upload_file(local, uri)
                uncompressed = parquet_text if name == "parquet" else len(gzip.decompress(local.read_bytes()))
                out[name] = measure(uri, store, uncompressed)
                print(name, out[name], flush=True)
            return out
        finally:
            server.stop()


# -- extractor comparison ------------------------------------------------------------------

def wcxb_pages() -> list[tuple[str, bytes]]:
    """(wcxb id, HTML bytes) of every response record."""
    raw = CountingStream(open(WCXB, "rb"))
    pages = []
    for rec in iter_warc_records(ByteReader(decompressed_events(raw)), 1 << 30):
        page_id = rec.headers["warc-target-uri"].rsplit("/", 1)[-1]
        pages.append((page_id, parse_http_response(rec.block).body))
    return pages


def words(text: str) -> Counter:
    return Counter(re.findall(r"\w+", text.lower()))


def token_f1(a: str, b: str) -> float:
    wa, wb = words(a), words(b)
    common = sum((wa & wb).values())
    if not common:
        return 0.0
    p, r = common / sum(wa.values()), common / sum(wb.values())
    return 2 * p * r / (p + r)


def norm(text: str) -> str:
    return " ".join(text.split()).lower()


def quality(extracted: str, visible: str) -> tuple[float | None, float | None]:
    """Proxies without ground truth, against the page's full visible text (web_sample.jsonl.gz):
    content recall = share of long visible lines (>= 15 words, almost always article prose)
    found in the extraction; boilerplate = share of extracted lines that are short visible
    lines (<= 4 words: menus, buttons, footers)."""
    lines = [ln.strip() for ln in visible.splitlines() if ln.strip()]
    long_lines = [norm(ln) for ln in lines if len(ln.split()) >= 15]
    short_lines = {norm(ln) for ln in lines if len(ln.split()) <= 4}
    got = norm(extracted)
    recall = sum(ln[:80] in got for ln in long_lines) / len(long_lines) if long_lines else None
    out_lines = [norm(ln) for ln in extracted.splitlines() if ln.strip()]
    boiler = sum(ln in short_lines for ln in out_lines) / len(out_lines) if out_lines else None
    return recall, boiler


def compare_extractors() -> dict:
    import trafilatura
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    visible = {}
    with gzip.open(WEB, "rt") as fh:
        for line in fh:
            row = json.loads(line)
            if row["id"].startswith("wcxb-"):
                visible[row["id"]] = row["text"]
    t0 = cpu()
    pages = wcxb_pages()
    parse_secs = cpu() - t0
    htmls = [(pid, body.decode("utf-8", "replace")) for pid, body in pages]
    mb = sum(len(b) for _, b in pages) / 1e6

    # FastWARC parse-only, for the record: how much the pure-Python parser costs.
    from fastwarc.warc import ArchiveIterator

    t0 = cpu()
    with open(WCXB, "rb") as fh:
        fast_n = sum(len(r.reader.read()) > 0 for r in ArchiveIterator(fh, parse_http=False))
    fast_secs = cpu() - t0

    extractors = {
        "resiliparse_main": lambda h: extract_text(h),
        "resiliparse_full": lambda h: extract_plain_text(HTMLTree.parse(h), main_content=False).strip(),
        "trafilatura": lambda h: (trafilatura.extract(h) or "").strip(),
    }
    outputs, result = {}, {}
    for name, fn in extractors.items():
        t0 = cpu()
        outputs[name] = [fn(h) for _, h in htmls]
        secs = cpu() - t0
        recalls, boilers = [], []
        for (pid, _), text in zip(htmls, outputs[name]):
            if pid in visible:
                r, b = quality(text, visible[pid])
                if r is not None:
                    recalls.append(r)
                if b is not None:
                    boilers.append(b)
        result[name] = {
            "cpu_s": round(secs, 2),
            "docs_per_cpu_s": round(len(htmls) / secs, 1),
            "html_mb_per_cpu_s": round(mb / secs, 2),
            "empty": sum(not t for t in outputs[name]),
            "mean_chars": round(sum(map(len, outputs[name])) / len(htmls)),
            "content_recall": round(sum(recalls) / len(recalls), 3),
            "boilerplate_share": round(sum(boilers) / len(boilers), 3),
        }
        print(name, result[name], flush=True)
    pairs = [token_f1(a, b) for a, b in zip(outputs["resiliparse_main"], outputs["trafilatura"]) if a and b]
    result["agreement_token_f1_resiliparse_main_vs_trafilatura"] = round(sum(pairs) / len(pairs), 3)
    result["pages"] = len(htmls)
    result["pages_with_visible_text"] = sum(pid in visible for pid, _ in htmls)
    result["parse_cpu_s"] = {"tokenmill_parser": round(parse_secs, 2), "fastwarc": round(fast_secs, 2), "fastwarc_records": fast_n}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wet-copies", type=int, default=3000, help="conversion records in the replicated WET file")
    ap.add_argument("--compare-extractors", action="store_true", help="also run the HTML extractor comparison (~1 CPU-minute)")
    args = ap.parse_args()
    figures: dict = {"throughput": throughput(args.wet_copies)}
    if args.compare_extractors:
        figures["extractors"] = compare_extractors()
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
