"""Takedowns: URL matching, scale (hash join), withdrawal, references instead of contents,
and requests filed while a refresh runs."""

from __future__ import annotations

import json
import pickle
import time

import pyarrow as pa
import pytest

from pipeline import refresh
from pipeline.dataset import DatasetVersion, latest_version, read_parquet
from pipeline.removals import RemovalRequest, RemovalSet, effective_requests, register_request, url_keys, withdraw_request
from pipeline.storage import StorageError, join


def match(requests: list[RemovalRequest], urls: list[str | None], ids: list[str] | None = None) -> list[str | None]:
    table = pa.table({"id": ids or [f"d{i}" for i in range(len(urls))], "url": pa.array(urls, pa.string())})
    return RemovalSet.from_requests(requests).match(table).to_pylist()


def test_urls_match_normalised_and_literally():
    request = RemovalRequest("r", urls=("https://Example.COM/Users/Bob?id=1",))
    urls = [
        "https://example.com/Users/Bob?id=1",  # host case
        "http://EXAMPLE.com:80/Users/Bob/?id=1",  # scheme, default port, trailing slash
        "https://example.com:443/Users/Bob?id=1#top",  # default port, fragment
        "https://example.com/Users/BobXid=1",  # `?` is literal, not a wildcard
        "https://example.com/users/bob?id=1",  # paths are case-sensitive
        "https://example.com:8443/Users/Bob?id=1",  # another port is another site
        None,
    ]
    assert match([request], urls) == ["r", "r", "r", None, None, None, None]


def test_globs_only_when_asked():
    exact = RemovalRequest("exact", urls=("https://site.org/a/*",))  # a literal `*` in a URL
    glob = RemovalRequest("glob", url_globs=("https://*.site.org/users/*",))
    urls = ["https://site.org/a/*", "https://site.org/a/b", "https://www.SITE.org/users/x/y", "https://site.org/users/x"]
    assert match([exact, glob], urls) == ["exact", None, "glob", None]
    with pytest.raises(ValueError, match="without"):
        RemovalRequest("bad", url_globs=("https://site.org/page",))
    legacy = RemovalRequest.from_json('{"name": "old", "url_patterns": ["https://a.org/x?y", "https://a.org/dir/*"]}')
    assert legacy.urls == ("https://a.org/x?y",) and legacy.url_globs == ("https://a.org/dir/*",)


def test_fifty_thousand_globs_and_a_million_ids():
    """50,000 patterns made every refresh fail (`pattern too large`); a million exact ids or
    URLs are a hash join. Timing is printed, not asserted (bench territory)."""
    globs = RemovalRequest("globs", url_globs=tuple(f"https://host{i}.org/user/{i}/*" for i in range(50_000)))
    urls = [f"https://host{i}.org/user/{i}/page" for i in range(0, 100_000, 7)] + ["https://host3.org/user/4/page"]
    got = match([globs], urls)
    assert got[:-1] == ["globs" if i < 50_000 else None for i in range(0, 100_000, 7)] and got[-1] is None
    ids = RemovalRequest("ids", doc_ids=tuple(f"doc-{i:09d}" for i in range(1_000_000)))
    started = time.process_time()
    removal_set = RemovalSet.from_requests([ids])
    built = time.process_time()
    docs = [f"doc-{i:09d}" for i in range(0, 2_000_000, 20)]
    reasons = removal_set.match(pa.table({"id": docs, "url": pa.nulls(len(docs), pa.string())}))
    print(f"\n1,000,000 ids: build {built - started:.2f} CPU-s, match of {len(docs):,} documents {time.process_time() - built:.2f} CPU-s")
    assert reasons.null_count == len(docs) // 2


def test_withdrawn_requests_stop_applying(store, bucket):
    dataset = join(bucket, "ds")
    register_request(dataset, RemovalRequest("a", doc_ids=("x",)), store)
    register_request(dataset, RemovalRequest("b", doc_ids=("y",), reason="mail from someone@example.com"), store)
    assert [r.name for r in effective_requests(dataset, store)] == ["a", "b"]
    withdraw_request(dataset, "b", "filed in error", store)
    assert [r.name for r in effective_requests(dataset, store)] == ["a"]
    with pytest.raises(StorageError, match="already registered"):
        register_request(dataset, RemovalRequest("b", doc_ids=("z",)), store)
    with pytest.raises(StorageError, match="no removal request"):
        withdraw_request(dataset, "nope", store=store)


def test_plan_carries_references_not_request_contents(refresh_inputs, store, bucket):
    dataset = join(bucket, "ds")
    secret_url = "https://private.example/person/jane-doe"
    register_request(dataset, RemovalRequest("gdpr-17", urls=(secret_url,), reason="asked by jane.doe@example.com"), store)
    plan = refresh_inputs.plan(dataset)
    assert plan.removal_names == ("gdpr-17",) and plan.removal_set.startswith(dataset)
    flat = pickle.dumps(plan) + repr(plan).encode()
    assert b"jane" not in flat and b"private.example" not in flat
    assert plan.removals(store).match(pa.table({"id": ["q"], "url": [secret_url]})).to_pylist() == ["gdpr-17"]


def test_requests_filed_during_a_refresh_are_applied(refresh_inputs, store, bucket):
    """(a) filed while the stages run: the version is re-planned before it is sealed;
    (b) filed after that check, while sealing: a derived version without it becomes latest."""
    dataset = join(bucket, "ds")
    plan = refresh_inputs.plan(dataset, sources=refresh_inputs.sources[1:3])
    victims: list[dict] = []

    def stages_then_file(plan):
        results = refresh.run_stages(plan)
        if not victims:  # two documents the unchanged refresh would keep
            kept = plan.final.read_table(columns=["id", "url"]).to_pylist()
            victims.extend([kept[0], kept[-1]])
            host, path = victims[0]["url"].split("://", 1)[1].split("/", 1)
            register_request(dataset, RemovalRequest("during", urls=(f"http://{host.upper()}:80/{path}/",)), store)
        return results

    def file_late():
        register_request(dataset, RemovalRequest("late", doc_ids=(victims[1]["id"],)), store)

    sealed_plan, manifest, _ = refresh.settle(plan, stages_then_file, before_seal=file_late)
    assert sealed_plan.version != plan.version and sealed_plan.removal_names == ("during",)
    final = refresh.finish(sealed_plan, manifest)
    latest = latest_version(dataset, store)
    assert latest.version == final.version != sealed_plan.version
    ids = latest.read_table(columns=["id"]).column("id").to_pylist()
    assert victims[0]["id"] not in ids and victims[1]["id"] not in ids
    assert len(ids) == manifest.rows - 1, "exactly the late victim went in the derived version"
    assert DatasetVersion(dataset, sealed_plan.version, store).manifest().extra["refresh"]["removal_requests"] == ["during"]
    assert final.extra["removals"]["requests"] == ["late"]


def test_a_source_hit_by_a_request_keeps_its_quarantine(refresh_inputs, store, bucket):
    """The source output holding a removed document is dropped after the view's copy is
    made: its quarantine table must survive into the sealed version."""
    dataset = join(bucket, "ds")
    pages = refresh_inputs.pages[:3]
    body = "".join(json.dumps(p) + "\n" for p in pages) + "{a broken line\n"
    source = store.put_bytes(join(bucket, "raw", "mixed.jsonl"), body.encode())
    register_request(dataset, RemovalRequest("r", doc_ids=(pages[0]["id"],)), store)
    manifest = refresh.run_refresh(refresh_inputs.plan(dataset, sources=[source]))
    version = DatasetVersion(dataset, manifest.version, store)
    ids = version.read_table(columns=["id"]).column("id").to_pylist()
    assert pages[0]["id"] not in ids and ids, "the requested document went, the others stayed"
    [quarantine] = version.quarantine_uris()
    assert read_parquet(store, quarantine).column("reason").to_pylist() == ["bad_json"]
    assert version.verify() == []
