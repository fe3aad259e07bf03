"""Small real refreshes for the dataset-core tests: pages of the shared web sample (with URLs)
as JSONL objects on the real S3 server, a light filter chain, the refresh's dedup."""

from __future__ import annotations

import gzip
import io
import json
import os
from dataclasses import dataclass

import pytest

from pipeline.dedup import DedupConfig
from pipeline.process import ReadOptions
from pipeline.refresh import DEFAULT_DEDUP, RefreshPlan, plan_refresh, run_stages
from pipeline.steps.chain import load_filter_config
from pipeline.storage import ObjectInfo, ObjectStore, join
from tests.conftest import read_web_sample

DOCS_PER_SOURCE = 12
# Gopher's heuristics only: no model to load, so each refresh takes seconds.
LIGHT_FILTERS = {"order": ["gopher_repetition", "gopher_quality"]}


def web_pages(shared, n: int) -> list[dict]:
    """Pages of the shared sample with a URL on their own domain."""
    pages = []
    for row in read_web_sample(shared, n):
        domain = (row["metadata"] or {}).get("domain") or "example.com"
        pages.append({"id": row["id"], "text": row["text"], "url": f"https://{domain}/page/{row['id']}"})
    return pages


def put_jsonl(store: ObjectStore, uri: str, docs: list[dict]) -> ObjectInfo:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        for d in docs:
            gz.write((json.dumps(d) + "\n").encode())
    return store.put_bytes(uri, buf.getvalue())


@dataclass
class RefreshInputs:
    store: ObjectStore
    bucket: str
    sources: list[ObjectInfo]
    pages: list[dict]

    def plan(self, dataset_uri: str, sources: list[ObjectInfo] | None = None, filters: dict | None = None) -> RefreshPlan:
        config = load_filter_config(filters or LIGHT_FILTERS)
        return plan_refresh(sources or self.sources, dataset_uri, config, DedupConfig(**DEFAULT_DEDUP), read=ReadOptions(), target_bytes=1 << 20, store=self.store)

    def run_stages(self, plan: RefreshPlan):
        return run_stages(plan)


@pytest.fixture(scope="module")
def refresh_inputs(s3_settings, shared) -> RefreshInputs:
    """Four JSONL sources of real pages (the last repeats two pages of the first, for dedup)
    and one broken JSONL file (quarantine)."""
    store = ObjectStore(s3_settings)
    bucket = f"s3://ds-{os.urandom(5).hex()}"
    store.ensure_bucket(bucket[5:])
    pages = web_pages(shared, 5 * DOCS_PER_SOURCE)
    sources = []
    for i in range(4):
        docs = pages[i * DOCS_PER_SOURCE : (i + 1) * DOCS_PER_SOURCE] + ([dict(pages[j], id=f"copy-{j}") for j in range(2)] if i == 3 else [])
        sources.append(put_jsonl(store, join(bucket, "raw", f"web-{i}.jsonl.gz"), docs))
    sources.append(store.put_bytes(join(bucket, "raw", "broken.jsonl"), b'{"id": "ok-1", "text": "a short fine document"}\n{not json\n'))
    return RefreshInputs(store, bucket, sorted(sources, key=lambda s: s.uri), pages)
