"""Scoring the PII scrubber on labelled lines of real web pages.

The labels (`tests/filters/pii_web_labels.jsonl`) hold no third-party text: each row names a
page of the shared web sample (`../shared/corpora/web/web_sample.jsonl.gz`) by id, a line
by number, the line's SHA-1 prefix (so a changed sample is an error, not silently wrong
figures) and the PII spans in it as [start, end, kind] character offsets. The rows are 700
distinct lines picked from the sample: every line holding a dotted quad or IPv6-like group,
an IBAN-like or card-like digit group, samples of the lines where the scrubber found e-mails
and phones, of lines holding "@" or digit runs it left alone, every line with a phone cue
word (Tel., Fax, Telefon ...) before digits, and samples of "SSN"/"password"/"secret" lines;
each reviewed by hand (IP addresses: public ones only, as the default `public_ips_only`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections import Counter
from pathlib import Path

LABELS_PATH = Path(__file__).resolve().parents[2] / "tests" / "filters" / "pii_web_labels.jsonl"
KINDS = ("EMAIL", "PHONE", "IP_ADDRESS", "CREDIT_CARD", "IBAN", "SSN", "SECRET")


def labelled_lines(web_sample: str | Path, labels: str | Path = LABELS_PATH) -> list[tuple[str, list[tuple[int, int, str]]]]:
    """(line text, expected spans) for every labelled row; ValueError if the sample changed."""
    rows = [json.loads(line) for line in Path(labels).read_text().splitlines() if line.strip()]
    wanted = {row["doc"] for row in rows}
    pages: dict[str, list[str]] = {}
    with gzip.open(web_sample, "rt", encoding="utf-8") as fh:
        for line in fh:
            page = json.loads(line)
            if page["id"] in wanted and page["id"] not in pages:
                pages[page["id"]] = page["text"].split("\n")
    out = []
    for row in rows:
        lines = pages.get(row["doc"])
        if lines is None or row["line"] >= len(lines):
            raise ValueError(f"{web_sample}: page {row['doc']} line {row['line']} not found; the labels need this sample")
        text = lines[row["line"]]
        if hashlib.sha1(text.encode()).hexdigest()[:12] != row["sha1"]:
            raise ValueError(f"{web_sample}: page {row['doc']} line {row['line']} differs from the labelled one")
        out.append((text, [tuple(s) for s in row["spans"]]))
    return out


def score(scrubber, cases: list[tuple[str, list[tuple[int, int, str]]]]) -> dict:
    """Per kind: precision and recall (a found span counts when it overlaps an expected span of
    its kind), exact-boundary matches, counts; plus the lines where anything went wrong."""
    tp, fp, fn, exact = Counter(), Counter(), Counter(), Counter()
    errors = []
    for text, expected in cases:
        found = scrubber.find(text)
        bad = False
        for kind in KINDS:
            exp = [(s, e) for s, e, k in expected if k == kind]
            pred = [(s, e) for s, e, k in found if k == kind]
            hit_exp = sum(any(s < e2 and s2 < e for s2, e2 in pred) for s, e in exp)
            hit_pred = sum(any(s < e2 and s2 < e for s2, e2 in exp) for s, e in pred)
            exact[kind] += len(set(exp) & set(pred))
            tp[kind] += hit_exp
            fn[kind] += len(exp) - hit_exp
            fp[kind] += len(pred) - hit_pred
            bad = bad or hit_exp < len(exp) or hit_pred < len(pred)
        if bad:
            errors.append({"expected": expected, "found": found, "text": text[:200]})
    table = {}
    for kind in KINDS:
        p = tp[kind] / (tp[kind] + fp[kind]) if tp[kind] + fp[kind] else None
        r = tp[kind] / (tp[kind] + fn[kind]) if tp[kind] + fn[kind] else None
        table[kind] = {"precision": None if p is None else round(p, 4), "recall": None if r is None else round(r, 4),
                       "expected": tp[kind] + fn[kind], "tp": tp[kind], "fp": fp[kind], "fn": fn[kind], "exact": exact[kind]}
    return {"lines": len(cases), "by_kind": table, "errors": errors}
