"""The quarantine records a run's report lists (`flows.ingest.quarantine_listing`, used by the
ingest and refresh reports), from a version written by the real `process_source` on real S3."""

from __future__ import annotations

import re

from pipeline.storage import join


def test_the_report_lists_quarantine_records_of_every_damaged_input(store, bucket):
    """`quarantine_listing` (the "Quarantined records" section of the ingest and refresh
    reports) shows each damaged input and each of its reasons within its bound, and counts all."""
    from flows.ingest import quarantine_listing, quarantine_markdown
    from pipeline.dataset import DatasetVersion
    from pipeline.process import process_source

    inputs = {
        "many.jsonl": b"".join(b"not json %d\n" % i for i in range(50)) + b'{"text": 3}\n{"text": "kept"}\n',
        "pi|pe.jsonl": b'{"text": "ok"}\n{"txt": "no text"}\n',
        "clean.jsonl": b'{"text": "fine"}\n',
    }
    version = DatasetVersion(join(bucket, "datasets", "q"), "v1", store)
    for name, data in inputs.items():
        info = store.put_bytes(join(bucket, "raw", name), data)
        process_source(info, version)
    manifest = version.seal()

    records, total = quarantine_listing(version, manifest, limit=10)
    assert total == 52
    assert len(records) == 10
    by_source = {}
    for r in records:
        by_source.setdefault(r["source"].rsplit("/", 1)[1], set()).add(r["reason"])
    assert by_source == {"many.jsonl": {"bad_json", "missing_text"}, "pi|pe.jsonl": {"missing_text"}}
    markdown = quarantine_markdown(records, total)
    assert "the first 10 of 52" in markdown and markdown.count("\n| `s3://") == 10
    rows = [line for line in markdown.splitlines() if line.startswith("| `")]
    assert all(len(re.split(r"(?<!\\)\|", line)) == 6 for line in rows), "a cell broke the table's columns"
    assert any("pi\\|pe.jsonl" in line for line in rows)
