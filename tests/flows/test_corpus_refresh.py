"""The corpus refresh flow end to end: real Prefect (test harness), real S3 server, real data."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pyarrow.compute as pc
import pytest

from pipeline.dataset import DatasetVersion, sealed_versions
from pipeline.dedup import DedupConfig
from pipeline.process import ReadOptions
from pipeline.refresh import DEFAULT_DEDUP, plan_refresh, run_refresh
from pipeline.removals import RemovalRequest, apply_removals, register_request, removal_version_id
from pipeline.steps.chain import load_filter_config
from pipeline.storage import join

pytestmark = pytest.mark.slow

DOCS_PER_SOURCE = 50


@pytest.fixture(scope="module")
def web_docs(shared) -> list[dict]:
    with gzip.open(shared / "corpora" / "web" / "web_sample.jsonl.gz", "rt") as fh:
        return [json.loads(line) for _, line in zip(range(4 * DOCS_PER_SOURCE), fh)]


def put_jsonl(store, uri: str, docs: list[dict]) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as gz:
        for d in docs:
            gz.write((json.dumps(d) + "\n").encode())
    store.put_bytes(uri, buf.getvalue())


@pytest.fixture(scope="module")
def bucket(s3_settings) -> str:
    """One bucket for the module: the inputs and the plain-loop reference are made once."""
    from pipeline.storage import ObjectStore

    name = f"refresh-{os.urandom(5).hex()}"
    ObjectStore(s3_settings).ensure_bucket(name)
    return f"s3://{name}"


@pytest.fixture(scope="module")
def store(s3_settings):
    from pipeline.storage import ObjectStore

    return ObjectStore(s3_settings)


@pytest.fixture(scope="module")
def sources(store, bucket, web_docs, shared) -> list[str]:
    """Four JSONL shards of real pages (with exact copies across shards, for dedup), one
    real WARC, one truncated gzip and one file of broken JSON lines."""
    uris = []
    for i in range(4):
        docs = web_docs[i * DOCS_PER_SOURCE : (i + 1) * DOCS_PER_SOURCE]
        if i:
            docs = docs + [dict(web_docs[j], id=f"copy-{i}-{j}") for j in range(5)]  # exact copies of shard 0 docs
        uri = join(bucket, "raw", f"web-{i}.jsonl.gz")
        put_jsonl(store, uri, docs)
        uris.append(uri)
    store.upload_file(shared / "corpora" / "warc" / "whirlwind.warc.gz", join(bucket, "raw", "whirlwind.warc.gz"))
    good = (shared / "corpora" / "warc" / "sample-0000.warc.gz").read_bytes()
    store.put_bytes(join(bucket, "raw", "truncated.warc.gz"), good[: len(good) // 2])
    store.put_bytes(join(bucket, "raw", "broken.jsonl"), b'{"text": "fine document here"}\n{not json\n' + b"\xff\xfe\n")
    return [join(bucket, "raw", "*")]


def params(sources, dataset, **extra):
    from flows.corpus_refresh import CorpusRefreshParams

    return CorpusRefreshParams(sources=sources, dataset=dataset, target_shard_mb=1, runner={"kind": "threads", "workers": 2}, **extra)


@pytest.fixture(scope="module")
def expected(store, bucket, sources) -> list[tuple]:
    """The same refresh without Prefect: the pipeline functions called in a plain loop."""
    from flows.ingest import list_sources

    dataset = join(bucket, "datasets", "reference")
    plan = plan_refresh(list_sources(sources, store), dataset, load_filter_config(None), DedupConfig(**DEFAULT_DEDUP), read=ReadOptions(), target_bytes=1 << 20, store=store)
    run_refresh(plan)
    return content(plan.final)


def content(version: DatasetVersion) -> list[tuple]:
    table = version.read_table(columns=["id", "text", "language"])
    return sorted(zip(*(table.column(c).to_pylist() for c in ("id", "text", "language"))))


def test_refresh_matches_plain_pipeline_and_reports(prefect_harness, store, bucket, sources, expected):
    from flows.corpus_refresh import corpus_refresh

    result = corpus_refresh(params(sources, join(bucket, "datasets", "web")))
    version = DatasetVersion(result["dataset"], result["version"], store)
    assert version.manifest().sealed
    assert content(version) == expected
    rows = content(version)
    ids, texts = [r[0] for r in rows], [r[1] for r in rows]
    assert len(ids) == len(set(ids)) and len(texts) == len(set(texts)), "one document of each exact-copy group is left"
    report = result["report"]
    assert report["documents"] == len(ids) > 0
    assert report["after_filters"] - report["documents"] == report["dedup_removed"] > 0
    assert report["quarantined"].get("truncated_gzip", 0) >= 1 and report["quarantined"].get("bad_json", 0) >= 1
    assert report["dropped"], "filters dropped something from real web pages"
    assert report["languages"] and report["estimated_tokens"] > 0
    assert report["quarantine"] and all(q.startswith(version.uri + "/quarantine/") for q in report["quarantine"])
    assert version.quarantine_uris() == report["quarantine"], "the quarantine is listed in the final manifest"
    assert store.list(join(result["dataset"], "_stages", "dedup") + "/") == []

    # an unchanged re-run: the same version, nothing recomputed, no second dataset.ready
    assert wait_for(lambda: len(ready_events(result["version"])) == 1)
    again = corpus_refresh(params(sources, join(bucket, "datasets", "web")))
    assert again["version"] == result["version"] and again["rows"] == result["rows"]
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()
    assert len(ready_events(result["version"])) == 1


def wait_for(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def ready_events(version_id: str) -> list:
    """`tokenmill.dataset.ready` events the Prefect server stored for one version."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.events.schemas.events import ResourceSpecification

    wanted = EventFilter(event=EventNameFilter(name=["tokenmill.dataset.ready"]), resource=EventResourceFilter(labels=ResourceSpecification({"tokenmill.dataset.version": version_id})))
    with get_client(sync_client=True) as client:
        return client.read_events(filter=wanted, limit=50).events  # the server allows at most 50


def test_killed_flow_resumes_without_loss_or_recompute(prefect_harness, store, bucket, sources, expected, s3_settings):
    from prefect.settings import PREFECT_API_URL

    dataset = join(bucket, "datasets", "killed")
    script = (
        "import sys; from flows.corpus_refresh import corpus_refresh, CorpusRefreshParams; "
        f"corpus_refresh(CorpusRefreshParams(sources={sources!r}, dataset={dataset!r}, target_shard_mb=1, runner={{'kind': 'threads', 'workers': 1}}))"
    )
    # a short lease: the killed run cannot release it, the re-run waits for it to expire
    env = {**os.environ, **s3_settings.as_env(), "PREFECT_API_URL": PREFECT_API_URL.value(), "TOKENMILL_LEASE_TTL_S": "8"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    caches = join(dataset, "_stages", "sources")
    deadline = time.monotonic() + 240
    committed_before = 0
    while time.monotonic() < deadline and proc.poll() is None:
        committed_before = sum(1 for o in store.list(caches + "/") if "/_commits/" in o.uri)
        if committed_before >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the flow ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= committed_before < 7

    from flows.corpus_refresh import corpus_refresh

    result = corpus_refresh(params(sources, dataset, wait_for_lease_s=120))
    report = result["report"]
    # filtered before the kill: resumed from this version's view, or reused from the source cache
    assert report["sources_resumed"] + report["sources_reused"] >= committed_before, "sources filtered before the kill are not filtered again"
    assert report["sources_reused"] + report["sources_filtered"] == 7
    assert content(DatasetVersion(dataset, result["version"], store)) == expected


def test_storage_outage_mid_run_is_retried(prefect_harness, s3_server, store, bucket, sources, expected):
    if s3_server is None:
        pytest.skip("the configured external S3 endpoint cannot be restarted by the test")
    from flows.corpus_refresh import corpus_refresh

    dataset = join(bucket, "datasets", "outage")
    stages = join(dataset, "_stages")

    def outage():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any("/_commits/" in o.uri for o in store.list(stages + "/")):
                break
            time.sleep(0.1)
        s3_server.stop()
        time.sleep(3)
        s3_server.restart()

    chaos = threading.Thread(target=outage)
    chaos.start()
    result = corpus_refresh(params(sources, dataset))
    chaos.join()
    assert content(DatasetVersion(dataset, result["version"], store)) == expected


def test_removal_request_makes_new_version_and_sticks(prefect_harness, store, bucket, sources, web_docs):
    from flows.corpus_refresh import corpus_refresh

    dataset = join(bucket, "datasets", "removals")
    first = corpus_refresh(params(sources, dataset))
    v1 = DatasetVersion(dataset, first["version"], store)
    table = v1.read_table(columns=["id", "url"])
    victim_id = table.column("id")[0].as_py()
    victim_url = next(u for u in table.column("url").to_pylist() if u)
    request = RemovalRequest("takedown-1", doc_ids=(victim_id,), urls=(victim_url,), reason="test takedown")
    register_request(dataset, request, store)
    v2 = DatasetVersion(dataset, removal_version_id(v1.manifest(), [request]), store)
    record = apply_removals(v1, v2, [request])
    assert record["removed"] >= 1 and record["changed_shards"]
    after = v2.read_table(columns=["id", "url"])
    assert victim_id not in after.column("id").to_pylist() and victim_url not in after.column("url").to_pylist()
    assert after.num_rows == table.num_rows - record["removed"]
    assert v2.manifest().extra["removals"]["requests"] == ["takedown-1"]
    # a later refresh (new input) applies the registered request by itself
    extra = join(bucket, "raw-later", "web-extra.jsonl.gz")
    put_jsonl(store, extra, web_docs[-DOCS_PER_SOURCE // 2 :])
    later = corpus_refresh(params([*sources, extra], dataset))
    assert later["version"] not in (v1.version, v2.version)
    later_table = DatasetVersion(dataset, later["version"], store).read_table(columns=["id", "url"])
    assert victim_id not in later_table.column("id").to_pylist()
    assert pc.sum(pc.equal(later_table.column("url"), victim_url)).as_py() in (None, 0)
    assert later["report"]["removal_requests"] == ["takedown-1"]
    assert any(k.startswith("removal:") for k in later["report"]["dropped"])
    assert len(sealed_versions(dataset, store)) == 3
