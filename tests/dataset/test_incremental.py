"""Incremental refresh: a source's filter output is keyed by its own inputs and reused;
sources are read with If-Match on the planned ETag; intermediates are collected after the
seal while the quarantine stays readable."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from pipeline import refresh
from pipeline.dataset import DatasetVersion, latest_version
from pipeline.storage import SourceChanged, join
from pipeline.process import EmptyOutputError
from tests.dataset.conftest import LIGHT_FILTERS, put_jsonl

pytestmark = pytest.mark.slow

SOURCES = 8  # the corpus has 16; the property (N cached, 1 new filtered) does not depend on N
DOCS = 4


def source_outputs(store, dataset: str) -> set[str]:
    """Keys of the per-source outputs that hold objects (SeaweedFS keeps emptied folders listed)."""
    root = join(dataset, "_stages", "sources", "versions") + "/"
    return {o.uri[len(root) :].split("/", 1)[0] for o in store.list(root)}


def test_one_new_object_filters_one_object(refresh_inputs, store, bucket):
    pages = refresh_inputs.pages
    sources = [put_jsonl(store, join(bucket, "raw", f"part-{i:02d}.jsonl.gz"), pages[i * DOCS : (i + 1) * DOCS]) for i in range(SOURCES)]
    sources.append(store.put_bytes(join(bucket, "raw", "part-broken.jsonl"), b'{"id": "fine", "text": "a fine short document"}\n{oops\n'))
    dataset = join(bucket, "ds")

    first = refresh.run_refresh(refresh_inputs.plan(dataset, sources=sources[:SOURCES]))
    assert first.extra["refresh"]["sources_filtered"] == SOURCES
    grown = refresh.run_refresh(refresh_inputs.plan(dataset, sources=sources))
    report = grown.extra["refresh"]
    print(f"\n1 new of {SOURCES + 1} objects: filtered {report['sources_filtered']}, reused {report['sources_reused']}")
    assert (report["sources_filtered"], report["sources_reused"]) == (1, SOURCES)
    assert latest_version(dataset, store).version == grown.version != first.version

    # after the seal: no dedup intermediates, no filtered views, the caches the latest version used
    assert store.list(join(dataset, "_stages", "dedup") + "/") == []
    assert store.list(join(dataset, "_stages", "filtered") + "/") == []
    assert source_outputs(store, dataset) == set(grown.extra["stages"]["sources"])

    # the broken file's quarantine is listed in the final manifest and still readable
    final = DatasetVersion(dataset, grown.version, store)
    [quarantine] = final.quarantine_uris()
    assert quarantine.startswith(final.uri + "/quarantine/") and report["quarantine"] == [quarantine]
    fs, path = store.arrow_filesystem(quarantine)
    assert pq.read_table(path, filesystem=fs).column("reason").to_pylist() == ["bad_json"]

    # new filters: every source is filtered again; the superseded caches go (keep 1 version)
    changed = refresh.run_refresh(refresh_inputs.plan(dataset, sources=sources[:2], filters={"order": ["gopher_quality"]}))
    assert (changed.extra["refresh"]["sources_filtered"], changed.extra["refresh"]["sources_reused"]) == (2, 0)
    assert source_outputs(store, dataset) == set(changed.extra["stages"]["sources"])
    assert not source_outputs(store, dataset) & set(grown.extra["stages"]["sources"])


def test_a_source_changed_after_planning_is_refused(refresh_inputs, store, bucket):
    uri = join(bucket, "raw", "moving.jsonl.gz")
    source = put_jsonl(store, uri, refresh_inputs.pages[:DOCS])
    plan = refresh_inputs.plan(join(bucket, "ds"), sources=[source])
    put_jsonl(store, uri, refresh_inputs.pages[DOCS : 2 * DOCS])  # new content under the same name
    with pytest.raises(SourceChanged, match="changed since it was planned"):
        refresh.filter_source(plan, source)
    assert plan.filtered.manifest().units == {} and plan.source_cache(source).manifest().units == {}


def test_reads_carry_if_match_while_streaming(refresh_inputs, store, bucket):
    """A source replaced while it is being read: the next request of the read fails."""
    uri = join(bucket, "raw", "big.jsonl")
    info = store.put_bytes(uri, b"".join(b'{"id": "%d", "text": "%s"}\n' % (i, b"x" * 2000) for i in range(3000)))
    stream = store.pinned({uri: info.etag}).open_random_access(uri)
    assert stream.read(10) == b'{"id": "0"'
    store.put_bytes(uri, b"replaced")
    stream.seek(5_000_000 // 2)
    with pytest.raises(SourceChanged):
        stream.read(100)


def test_filters_that_keep_nothing_fail_naming_what_dropped_it(refresh_inputs, bucket):
    """Every document dropped (here: no page has a billion words) used to fail later, in the
    dedup plan, with "no input shards to deduplicate"; now the error says what was read and
    which rule dropped it, and nothing is sealed."""
    dataset = join(bucket, "emptied")
    plan = refresh_inputs.plan(dataset, filters={**LIGHT_FILTERS, "gopher_quality": {"min_words": 10**9}})
    with pytest.raises(EmptyOutputError, match=r"kept none of the \d+ documents read \(dropped by rule: \{.*gopher_quality"):
        refresh.run_refresh(plan)
    assert not plan.final.is_sealed()
