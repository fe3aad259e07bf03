"""Helpers for the filter tests: tables from texts, distinct filler words, one toxicity
model trained per session."""

from __future__ import annotations

import gzip
import json

import pytest

from pipeline.schema import documents_from_pylist


def docs(*texts: str, language: str | None = None):
    return documents_from_pylist([{"id": str(i), "text": t, "source": "test", "language": language} for i, t in enumerate(texts)])


def words(n: int, start: int = 0, length: int = 5) -> list[str]:
    """n distinct lower-case words of exactly `length` letters (no stop words)."""
    out = []
    for i in range(start, start + n):
        w, k = "", i
        for _ in range(length - 1):
            w = chr(ord("a") + k % 26) + w
            k //= 26
        out.append("q" + w)  # a leading q keeps them clear of real words
    return out


def reason(step, table) -> list:
    """The drop reason of every row (None = kept), via the step's own annotate."""
    _, reasons = step.annotate(table)
    return [None] * table.num_rows if reasons is None else reasons.to_pylist()


@pytest.fixture(scope="session")
def toxicity_model(tmp_path_factory, shared):
    from pipeline.steps.classifier import ensure_toxicity_model

    return ensure_toxicity_model(tmp_path_factory.mktemp("models"), shared / "toxicity" / "jigsaw_wiki_comments.jsonl.gz")


@pytest.fixture(scope="session")
def web_rows(shared):
    rows = []
    with gzip.open(shared / "corpora" / "web" / "web_sample.jsonl.gz", "rt") as fh:
        for i, line in enumerate(fh):
            if i % 8 == 0:  # every eighth page: all the sources and languages, ~310 pages
                row = json.loads(line)
                rows.append({"id": row["id"], "text": row["text"], "source": "web_sample"})
    return rows
