"""PII scrubbing: typed placeholders, validators, counts, and text otherwise untouched."""

from __future__ import annotations

import pytest

from pipeline.steps.pii import PIIFilter, PIIScrubber, card_ok, iban_ok
from tests.filters.conftest import docs

CASES = [
    ("Write to jane.doe+news@example.co.uk today.", "Write to <EMAIL> today."),
    ("Call (415) 555-0132 or +44 20 7123 4567.", "Call <PHONE> or <PHONE>."),
    ("Berlin: +49 30 1234567, Tokyo 090-1234-5678", "Berlin: <PHONE>, Tokyo <PHONE>"),
    ("Server at 8.8.8.8 and 2001:4860:4860::8888.", "Server at <IP_ADDRESS> and <IP_ADDRESS>."),
    ("Card 4111 1111 1111 1111 expires.", "Card <CREDIT_CARD> expires."),
    ("IBAN DE89 3704 0044 0532 0130 00 please", "IBAN <IBAN> please"),
    ("SSN 078-05-1123 on file", "SSN <SSN> on file"),
    ("key AKIAIOSFODNN7EXAMPLE in config", "key <SECRET> in config"),
    ("token ghp_" + "a" * 36 + " leaked", "token <SECRET> leaked"),
    ('aws_secret_access_key = "' + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY" + '"', 'aws_secret_access_key = "<SECRET>"'),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nabc+/=\n-----END RSA PRIVATE KEY-----\nafter", "<SECRET>\nafter"),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_replacements(text, expected):
    out = PIIFilter()(docs(text))
    assert out.column("text")[0].as_py() == expected


NEGATIVES = [
    "Card 4111 1111 1111 1112 fails Luhn.",
    "Years 1996 1997 1998 1999 2000 are no card.",
    "IBAN DE89 3704 0044 0532 0130 01 has a bad checksum.",
    "Private 192.168.1.1 and loopback 127.0.0.1 stay.",
    "openjdk version 17.0.4.1 is a version.",
    "SSN-like 000-12-3456 and 666-12-3456 are invalid.",
    "Time 12:34:56 and std::cout and aa:bb:cc:dd:ee:ff are not IPs.",
    "Dates 2021-05-21 and prices $1,299.00 are no phones.",
    "info@presidio. is no email",
]


@pytest.mark.parametrize("text", NEGATIVES)
def test_no_false_positives(text):
    assert PIIFilter()(docs(text)).column("text")[0].as_py() == text


def test_counts_and_byte_identical_rest():
    text = "Héllo — 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 a@b.com and c@d.org, call +1 415 555 0132.\r\n\ttabs stay"
    step = PIIFilter()
    out = step(docs(text, "no candidates here"))
    assert out.column("text").to_pylist() == ["Héllo — 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 <EMAIL> and <EMAIL>, call <PHONE>.\r\n\ttabs stay", "no candidates here"]
    assert step.stats.counters == {"EMAIL": 2, "PHONE": 1}


def test_private_ips_when_asked():
    assert PIIFilter(public_ips_only=False)(docs("gw 192.168.1.1.")).column("text")[0].as_py() == "gw <IP_ADDRESS>."


def test_scrubber_spans_match_batch_path():
    text = "x@y.io dns 8.8.4.4 +33 1 42 68 53 00 " * 3
    spans = PIIScrubber().find(text)
    assert [label for _, _, label in spans] == ["EMAIL", "IP_ADDRESS", "PHONE"] * 3
    assert PIIFilter()(docs(text)).column("text")[0].as_py() == PIIScrubber().scrub(text)[0]


def test_validators():
    assert card_ok("4111111111111111") and not card_ok("4111111111111112")
    assert not card_ok("1748503543012")  # a millisecond timestamp passes Luhn but is no card
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB82 WEST 1234 5698 7654 33")


def test_unknown_type_is_an_error():
    with pytest.raises(ValueError, match="unknown PII types"):
        PIIFilter(types=["PASSPORT"])
