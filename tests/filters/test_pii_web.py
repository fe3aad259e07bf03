"""PII scrubbing on 700 labelled lines of real web pages (labels reference ../shared by page
id and line number; see pipeline/steps/pii_labels.py): precision and recall per kind."""

from __future__ import annotations

import json

import pytest

from pipeline.steps.pii import PIIScrubber
from pipeline.steps.pii_labels import LABELS_PATH, labelled_lines, score


@pytest.fixture(scope="module")
def cases(shared):
    return labelled_lines(shared / "corpora" / "web" / "web_sample.jsonl.gz")


def test_precision_and_recall_per_kind_on_real_lines(cases):
    result = score(PIIScrubber(), cases)
    assert result["lines"] == 700
    for kind, fig in result["by_kind"].items():
        if fig["expected"] >= 10:  # e-mail, phone, IP, IBAN: enough to measure
            assert fig["precision"] >= 0.95 and fig["recall"] >= 0.95, (kind, fig)
        else:  # kinds the sample barely holds: no false alarms on the lines that look like them
            assert fig["fp"] <= 1, (kind, fig, result["errors"])


def test_labels_are_checked_against_the_sample(tmp_path, shared):
    row = json.loads(LABELS_PATH.read_text().splitlines()[0])
    bad = tmp_path / "labels.jsonl"
    bad.write_text(json.dumps(dict(row, sha1="000000000000")) + "\n")
    with pytest.raises(ValueError, match="differs from the labelled one"):
        labelled_lines(shared / "corpora" / "web" / "web_sample.jsonl.gz", bad)


PRECISION_CASES = [
    # versions and section numbers are not addresses (issue 13)
    ("Java version: 17.0.4.1, vendor: BellSoft", "Java version: 17.0.4.1, vendor: BellSoft"),
    ("Sanity Checking Closure Invocation Overhead In Lucee 5.3.2.77", "Sanity Checking Closure Invocation Overhead In Lucee 5.3.2.77"),
    ("Firefox 2.0.0.16 - SeaMonkey 1.1.11", "Firefox 2.0.0.16 - SeaMonkey 1.1.11"),
    ("Section 7.8.2.1 applies", "Section 7.8.2.1 applies"),
    ("- 3.20.1.2 Using a static binary", "- 3.20.1.2 Using a static binary"),
    ("link-local (169.254.0.0/16 and 224.0.0.0/24 for IPv4)", "link-local (169.254.0.0/16 and 224.0.0.0/24 for IPv4)"),
    # ids and product codes are not phones
    ("request b116df00-3333-431c-9b1a-1c2d3e4f5a6b failed", "request b116df00-3333-431c-9b1a-1c2d3e4f5a6b failed"),
    ("SKU: ZS2760938 MFR: 000000-2760-938", "SKU: ZS2760938 MFR: 000000-2760-938"),
    ("posted 15/01/201614/01/2016", "posted 15/01/201614/01/2016"),
    # a URL's path is no e-mail local part
    ("<https://lore.kernel.org/r/Pine.LNX.4.58.0504071023190.28951@ppc970.osdl.org>",
     "<https://lore.kernel.org/r/Pine.LNX.4.58.0504071023190.28951@ppc970.osdl.org>"),
]
RECALL_CASES = [
    ("My SSN: 078051123 is on the form", "My SSN: <SSN> is on the form"),
    ("login with password: hunter2024 today", "login with password: <SECRET> today"),
    ('db_passwd="s3cr3t pass"', 'db_passwd="<SECRET>"'),
    ("write to john (at) example (dot) com", "write to <EMAIL>"),
    ("Mail: info(@)hvw-online.org", "Mail: <EMAIL>"),
    ("Telefon: +49 (0)30 / 420248-0", "Telefon: <PHONE>"),
    ("Tel. 089 / 5 14 69 76 11", "Tel. <PHONE>"),
    ("IBAN NL45RABO0105881341EUR", "IBAN <IBAN>EUR"),
    ("The IPs 38.107.191.66 through 38.107.191.119.", "The IPs <IP_ADDRESS> through <IP_ADDRESS>."),
]


@pytest.mark.parametrize("text,expected", PRECISION_CASES + RECALL_CASES)
def test_issue_cases(text, expected):
    assert PIIScrubber().scrub(text)[0] == expected
