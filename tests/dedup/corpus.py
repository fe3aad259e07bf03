"""Small test corpora built from the shared web sample, with planted duplicates."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

from pipeline.dedup.shingles import shingles


def web_docs(shared: Path, n: int, min_words: int = 0) -> list[dict]:
    out = []
    with gzip.open(shared / "corpora/web/web_sample.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if len(row["text"].split()) >= min_words:
                out.append({"id": str(row["id"]), "text": row["text"]})
            if len(out) == n:
                break
    return out


def edit_words(text: str, fraction: float, seed: int) -> str:
    """Replace about `fraction` of the words with new ones (keeps line structure)."""
    rng = random.Random(seed)
    lines = []
    for line in text.split("\n"):
        words = line.split(" ")
        lines.append(" ".join(f"zq{rng.randrange(10**6)}" if w and rng.random() < fraction else w for w in words))
    return "\n".join(lines)


def jaccard(x: str, y: str, ngram: int = 5) -> float:
    a, b = set(shingles(x, ngram)), set(shingles(y, ngram))
    return len(a & b) / len(a | b) if a | b else 0.0
