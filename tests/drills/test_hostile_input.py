"""The hostile-input drill: one good file beside 35 bad ones under `raw/` on the real S3
server, through the real `tokenmill ingest` command (Prefect harness, thread runner) and a
corpus refresh over the same prefix. Nothing fails the run: the good file's documents are all
there, both versions seal, every bad file is quarantined with a reason or skipped with a line
in the report, the command prints a table with every input's quarantine counts, and both runs'
reports list the quarantine records."""

from __future__ import annotations

import json
import re

import pytest

from pipeline.dataset import DatasetVersion, sealed_versions
from pipeline.storage import join

from .hostile_files import GOOD_DOCS, drills

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def drill(shared, tmp_path_factory):
    return drills(shared, tmp_path_factory.mktemp("drill"))


def normalised(text: str) -> str:
    """What a reader makes of a text: CR LF / CR → LF, control characters but tab and LF gone."""
    return re.sub("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", "", re.sub("\r\n?", "\n", text)).strip()


def newest_artifact(key: str) -> str:
    """The data of the newest Prefect artifact with `key` (asked of the endpoint directly)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        (found,) = client.request("POST", "/artifacts/filter", json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1}).json()
    return found["data"]


def assert_quarantine_listed(report: str, counts: dict[str, dict]) -> None:
    """The run's report lists quarantine records (with their reasons) of every input that has any."""
    section = report[report.index("## Quarantined records") :]
    for uri, c in counts.items():
        for reason in c["reader"]["quarantined"]:
            assert any(line.startswith(f"| `{uri}` |") and f"| {reason} |" in line for line in section.splitlines()), (uri, reason)


def upload(store, raw: str, files) -> dict[str, object]:
    by_uri = {}
    for d in files:
        uri = join(raw, d.name)
        if isinstance(d.data, bytes):
            store.put_bytes(uri, d.data)
        else:
            store.upload_file(d.data, uri)
        by_uri[uri] = d
    return by_uri


def test_drill_set_through_ingest_cli_and_corpus_refresh(prefect_harness, store, bucket, drill, capsys):
    from flows.cli import main
    from flows.corpus_refresh import CorpusRefreshParams, corpus_refresh

    good_rows, files = drill
    raw = join(bucket, "raw")
    by_uri = upload(store, raw, files)
    assert len({d.cls for d in files if d.cls != "good"}) >= 25

    dataset = join(bucket, "datasets", "drill")
    assert main(["ingest", join(raw, "**"), "--dataset", dataset, "--runner", "threads"]) == 0
    out = capsys.readouterr().out

    (sealed,) = sealed_versions(dataset, store)
    version = DatasetVersion(dataset, sealed["version"], store)
    manifest = version.manifest()
    assert manifest.sealed
    counts = {unit["counts"]["source"]: unit["counts"] for unit in manifest.units.values()}
    skipped = {s["source"]: s["reason"] for s in manifest.extra["ingest"]["skipped_sources"]}
    assert set(counts) | set(skipped) == set(by_uri) and not set(counts) & set(skipped)

    table = version.read_table(columns=["id", "text", "source"])
    good_uri = join(raw, "good.jsonl.gz")
    good_texts = {i: t for i, t, s in zip(*(table.column(c).to_pylist() for c in ("id", "text", "source"))) if s == good_uri}
    assert good_texts == {r["id"]: normalised(r["text"]) for r in good_rows} and len(good_texts) == GOOD_DOCS

    for uri, d in by_uri.items():
        if d.skipped:
            assert skipped[uri] == d.skipped, d.name
            continue
        stats = counts[uri]["reader"]
        reasons = set(stats["quarantined"])
        if d.reasons_within is not None:
            assert reasons and reasons <= d.reasons_within, (d.name, stats)
        else:
            assert reasons == d.reasons, (d.name, stats)
        if d.docs is not None:
            assert stats["documents"] == d.docs, (d.name, stats)
        assert stats["records"] == stats["documents"] + sum(stats["skipped"].values()) + sum(stats["quarantined"].values()), d.name
        assert d.docs == 0 or reasons or stats["documents"], f"{d.name}: neither documents nor a quarantine reason"

    texts = table.column("text").to_pylist()
    assert not any(ch in t for t in texts for ch in "\x00\r\x1b"), "control characters or CR left in a document"
    assert not any("WARC-Record-ID" in t for t in texts), "a WARC record swallowed the next ones"
    assert max(len(t.encode()) for t in texts) <= 5_000_000

    # The command's table: one row per object, with every input's quarantine counts by reason.
    lines = out.splitlines()
    for uri, d in by_uri.items():
        (row,) = [line for line in lines if line.startswith(uri + " ")]
        if d.skipped:
            assert row.endswith(f"skipped: {d.skipped}")
        else:
            for reason, n in counts[uri]["reader"]["quarantined"].items():
                assert f"{reason}={n}" in row, row
    assert json.loads(out[out.index("{"):])["skipped"] == len(skipped)
    assert_quarantine_listed(newest_artifact("ingest-report"), counts)
    assert f"quarantine records (offset, reason, detail) in {len(version.quarantine_uris(manifest))} files under {version.uri}/quarantine/" in out

    # A corpus refresh over the same prefix reads exactly what the ingest read.
    result = corpus_refresh(CorpusRefreshParams(sources=[join(raw, "**")], dataset=join(bucket, "datasets", "drill-refresh"), target_shard_mb=1,
                                                runner={"kind": "threads", "workers": 2}))
    report = result["report"]
    assert DatasetVersion(result["dataset"], result["version"], store).manifest().sealed
    assert {s["source"]: s["reason"] for s in report["skipped_sources"]} == skipped
    assert report["documents_read"] == sum(c["reader"]["documents"] for c in counts.values())
    ingest_quarantined: dict[str, int] = {}
    for c in counts.values():
        for reason, n in c["reader"]["quarantined"].items():
            ingest_quarantined[reason] = ingest_quarantined.get(reason, 0) + n
    assert report["quarantined"] == dict(sorted(ingest_quarantined.items()))
    assert 0 < report["documents"] <= report["after_filters"] <= report["documents_read"]
    assert_quarantine_listed(newest_artifact("refresh-report"), counts)
