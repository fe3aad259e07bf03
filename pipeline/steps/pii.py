"""PII scrubbing: typed placeholders in place of emails, phone numbers, IP addresses, payment
cards, IBANs, US social security numbers and secrets; every other character stays as it was.

Two stages keep it cheap. First one RE2 pass per entity type over the whole batch (Arrow,
C++) marks which documents hold a candidate at all; most documents hold none of most types.
Then, for the marked documents only, Python regexes (which have the look-arounds RE2 lacks)
find the matches, validators reject the false ones (Luhn for cards, mod-97 for IBANs,
`ipaddress` for IPs, public addresses only by default, SSN area/group/serial rules), and
the spans are claimed in priority order — a secret or email is never re-read as a phone.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.steps.base import Step
from pipeline.steps.text import as_bool, replace_text, text_column

Span = tuple[int, int, str]


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# Issuer prefixes and lengths (ISO/IEC 7812 ranges of the major networks): a Luhn check alone
# passes one random digit string in ten, e.g. runs of years like "1996 1997 1998 1999".
_CARD_RANGES = (
    (("4",), (13, 16, 19)),  # Visa
    (tuple(str(p) for p in range(51, 56)) + tuple(str(p) for p in range(2221, 2721)), (16,)),  # Mastercard
    (("34", "37"), (15,)),  # American Express
    (("300", "301", "302", "303", "304", "305", "36", "38", "39"), (14, 15, 16)),  # Diners Club
    (("6011", "644", "645", "646", "647", "648", "649", "65", "62"), (16, 17, 18, 19)),  # Discover, UnionPay
    (("35",), (16, 17, 18, 19)),  # JCB
    (("50",) + tuple(str(p) for p in range(56, 70)), tuple(range(12, 20))),  # Maestro and national schemes
    (("1",), (15,)),  # UATP
)


def card_ok(digits: str) -> bool:
    if not luhn_ok(digits):
        return False
    return any(len(digits) in lengths and digits.startswith(prefixes) for prefixes, lengths in _CARD_RANGES)


def _card(match: re.Match) -> tuple[int, int] | None:
    return match.span() if card_ok(re.sub(r"[ -]", "", match.group(0))) else None


def iban_ok(candidate: str) -> bool:
    s = candidate.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    rearranged = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _iban(match: re.Match) -> tuple[int, int] | None:
    return match.span() if iban_ok(match.group(0)) else None


def _digit_count(lo: int, hi: int) -> Callable[[re.Match], tuple[int, int] | None]:
    def check(match: re.Match) -> tuple[int, int] | None:
        n = sum(c.isdigit() for c in match.group(0))
        return match.span() if lo <= n <= hi else None

    return check


# "version 17.0.4.1", "build 5.3.6.61": dotted quads that are software versions
_VERSION_BEFORE = re.compile(r"\b(?:version|build|release|ver\.?|v)\s*[\"'(]?\s*$", re.IGNORECASE)


def _ip(public_only: bool) -> Callable[[re.Match], tuple[int, int] | None]:
    def check(match: re.Match) -> tuple[int, int] | None:
        address = match.group("addr") or match.group("addr6")
        if match.group("addr") and _VERSION_BEFORE.search(match.string, max(0, match.start() - 16), match.start()):
            return None
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        if public_only:
            mapped = getattr(ip, "ipv4_mapped", None)
            if not (mapped or ip).is_global:
                return None
        return match.span()

    return check


def _group_or_whole(match: re.Match) -> tuple[int, int]:
    """Secrets given as `name = value` lose only the value."""
    return match.span("value") if match.groupdict().get("value") is not None else match.span()


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"(?:{_OCTET}\.){{3}}{_OCTET}"
_HEX = r"[0-9A-Fa-f]"

_PRIVATE_KEY = r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----(?:[\s\S]{0,20000}?-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s]*)"
_TOKENS = "|".join(
    [
        r"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}\b",  # AWS access key id
        r"(?i:aws_?secret_?access_?key|aws_?secret)[\"']?\s*[:=]\s*[\"']?(?P<value>[A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])",
        r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}\b|\bgithub_pat_[A-Za-z0-9_]{82}\b",  # GitHub
        r"\bxox[abposr]-[A-Za-z0-9-]{10,250}|https://hooks\.slack\.com/services/[A-Za-z0-9/_-]{20,}",  # Slack
        r"\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])",  # Google API key
        r"\b(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,247}\b",  # Stripe secret / restricted keys
        r"\bsk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{20,}T3BlbkFJ[A-Za-z0-9_-]{20,}|\bsk-[A-Za-z0-9]{48}\b",  # OpenAI
        r"\bglpat-[A-Za-z0-9_-]{20}\b",  # GitLab
        r"\bnpm_[A-Za-z0-9]{36}\b",  # npm
    ]
)
_TOKEN_STARTS = (
    r"\b(?:AKIA|ASIA|ABIA|ACCA|A3T|gh[pousr]_|github_pat_|xox[abposr]-|AIza|[sr]k_(?:live|test)_|sk-|glpat-|npm_)"
    r"|(?i:aws_?secret)|https://hooks\.slack\.com"
)


@dataclass(frozen=True)
class Entity:
    """One kind of PII. `region` is an RE2 pattern whose matches, extended by `window`
    characters, contain every match of `pattern` (Python `re`, with look-arounds), so that
    `pattern` only ever runs over those regions."""

    label: str  # the placeholder's name: <LABEL>
    region: str
    pattern: re.Pattern
    validate: Callable[[re.Match], tuple[int, int] | None]
    window: int = 2
    # a match that fails validation still shields its text from later types (an IBAN with a
    # wrong checksum is not a phone number either)
    shield_invalid: bool = False


def _whole(match: re.Match) -> tuple[int, int]:
    return match.span()


def entities(public_ips_only: bool = True) -> list[Entity]:
    """All entity types, in the order they claim text."""
    return [
        Entity("SECRET", r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY", re.compile(_PRIVATE_KEY), _whole, window=20_300),
        Entity("SECRET", _TOKEN_STARTS, re.compile(_TOKENS), _group_or_whole, window=300),
        Entity("EMAIL", r"[A-Za-z0-9._%+!#$&'*/=?^`{|}~-]*@(?:[A-Za-z0-9-]+\.)+[A-Za-z][A-Za-z0-9-]*",
               re.compile(r"(?<![A-Za-z0-9._%+!#$&'*/=?^`{|}~-])[A-Za-z0-9._%+!#$&'*/=?^`{|}~-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?![A-Za-z0-9-])"),
               _whole),
        Entity("IBAN", r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?",
               re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![A-Za-z0-9])"), _iban, shield_invalid=True),
        Entity("CREDIT_CARD", r"[0-9](?:[ -]?[0-9]){12,}",
               re.compile(r"(?<![0-9-])[1-6][0-9]{3}(?:[ -]?[0-9]){9,15}(?![0-9])"), _card),
        Entity("SSN", r"[0-9]{3}[- .][0-9]{2}[- .][0-9]{4}",
               re.compile(r"(?<![0-9.-])(?!000|666|9)[0-9]{3}([- .])(?!00)[0-9]{2}\1(?!0000)[0-9]{4}(?![0-9]|[.-][0-9])"), _whole),
        Entity("IP_ADDRESS", r"(?:[0-9A-Fa-f]{0,4}[:.]){2,}[0-9A-Fa-f:.]*(?:%[0-9A-Za-z]+)?(?:/[0-9]{1,3})?",
               re.compile(
                   rf"(?<![0-9A-Za-z.])(?P<addr>{_IPV4})(?:/(?:3[0-2]|[12]?[0-9])(?![0-9]))?(?![0-9A-Za-z])"
                   rf"|(?<![0-9A-Za-z:.])(?P<addr6>(?:{_HEX}{{0,4}}:){{2,7}}(?:{_IPV4}|{_HEX}{{0,4}})(?:%[0-9A-Za-z]+)?)"
                   r"(?:/(?:12[0-8]|1[01][0-9]|[1-9]?[0-9])(?![0-9]))?(?![0-9A-Za-z:]|\.[0-9])"
               ),
               _ip(public_ips_only), window=3),
        Entity("PHONE", r"[+(0-9][0-9 ().+-]*[0-9]",
               re.compile(
                   r"(?<![0-9A-Za-z+])\+[0-9]{1,3}(?:[ .-]?\(?[0-9]{1,4}\)?){1,5}[ .-]?[0-9]{2,4}(?![0-9])"  # +CC, international
                   r"|(?<![0-9])[0-9]{1,3}[ .-][0-9]{3}[ .-][0-9]{3}[ .-][0-9]{4}(?![0-9])"  # CC-NPA-NXX-XXXX
                   r"|(?:(?<![0-9])\([0-9]{3}\) ?|(?<![0-9])[0-9]{3}[ .-]?)[0-9]{3}[ .-][0-9]{4}(?![0-9])"  # North American
                   r"|(?<![0-9])0[0-9]{1,4}[ -][0-9]{3,4}[ -]?[0-9]{3,4}(?![0-9])"  # national, trunk prefix 0
                   r"|(?<![0-9])1[3-9][0-9]{9}(?![0-9])"  # Chinese mobile
               ),
               _digit_count(7, 15)),
    ]


# Marks RE2 region matches inside the text so their offsets can be read back; private-use
# code points, and a document that already holds one is scanned whole instead.
_OPEN, _CLOSE = "\ue000", "\ue001"


def regions_of(texts: pa.Array, region: str) -> list[list[tuple[int, int]] | None]:
    """Per text, the (start, end) of every match of an RE2 pattern; None where the text holds
    the marker characters itself."""
    marked = pc.replace_substring_regex(texts, region, _OPEN + r"\0" + _CLOSE).to_pylist()
    clash = as_bool(pc.match_substring_regex(texts, f"[{_OPEN}{_CLOSE}]"))
    out: list[list[tuple[int, int]] | None] = []
    for text, bad in zip(marked, clash):
        if bad:
            out.append(None)
            continue
        spans = []
        i = text.find(_OPEN)
        while i >= 0:
            j = text.find(_CLOSE, i)
            shift = 2 * len(spans) + 1
            spans.append((i - shift + 1, j - shift))
            i = text.find(_OPEN, j)
        out.append(spans)
    return out


class PIIScrubber:
    """Finds and replaces PII in single strings; `PIIFilter` runs it over batches."""

    def __init__(self, types: list[str] | None = None, public_ips_only: bool = True):
        all_entities = entities(public_ips_only)
        known = sorted({e.label for e in all_entities})
        unknown = sorted(set(types or []) - set(known))
        if unknown:
            raise ValueError(f"unknown PII types {unknown}; known: {known}")
        self.entities = [e for e in all_entities if types is None or e.label in types]

    def find(self, text: str, regions: dict[int, list[tuple[int, int]] | None] | None = None) -> list[Span]:
        """Non-overlapping (start, end, label) spans, sorted. `regions` (entity index -> RE2
        regions in this text) limits where each entity's regex runs; without it every entity
        scans the whole text."""
        starts: list[int] = []
        spans: list[Span] = []
        for k, entity in enumerate(self.entities):
            if regions is None or regions.get(k) is None:
                windows = [(0, len(text))] if regions is None or k in regions else []
            else:
                windows = [(s, min(len(text), e + entity.window)) for s, e in regions[k]]
            for lo, hi in windows:
                for match in entity.pattern.finditer(text, lo, hi):
                    span = entity.validate(match)
                    label = entity.label
                    if span is None:
                        if not entity.shield_invalid:
                            continue
                        span, label = match.span(), None
                    start, end = span
                    i = bisect.bisect_left(starts, start)
                    if (i and spans[i - 1][1] > start) or (i < len(spans) and spans[i][0] < end):
                        continue  # claimed already, by an earlier type or an overlapping window
                    starts.insert(i, start)
                    spans.insert(i, (start, end, label))
        return [s for s in spans if s[2] is not None]

    def scrub(self, text: str, regions: dict | None = None) -> tuple[str, Counter]:
        spans = self.find(text, regions)
        if not spans:
            return text, Counter()
        parts, pos = [], 0
        for start, end, label in spans:
            parts.append(text[pos:start])
            parts.append(f"<{label}>")
            pos = end
        parts.append(text[pos:])
        return "".join(parts), Counter(label for _, _, label in spans)


class PIIFilter(Step):
    """Rewrites text; drops nothing. Counters: replacements per type."""

    name = "pii"

    def __init__(self, types: list[str] | None = None, public_ips_only: bool = True, keep_scores: bool = False):
        super().__init__()
        self.scrubber = PIIScrubber(types, public_ips_only)
        self.keep_scores = keep_scores

    def annotate(self, table):
        texts = text_column(table)
        n = len(texts)
        # which documents hold a candidate of which entity, then where exactly (RE2, C++)
        per_doc: dict[int, dict[int, list | None]] = {}
        for k, entity in enumerate(self.scrubber.entities):
            rows = np.flatnonzero(as_bool(pc.match_substring_regex(texts, entity.region)))
            if len(rows):
                for row, found in zip(rows, regions_of(texts.take(pa.array(rows)), entity.region)):
                    per_doc.setdefault(int(row), {})[k] = found
        replacements = np.zeros(n, np.int32)
        new_texts: dict[int, str] = {}
        for row, regions in per_doc.items():
            scrubbed, counts = self.scrubber.scrub(texts[row].as_py(), regions)
            if counts:
                self.stats.counters.update(counts)
                replacements[row] = sum(counts.values())
                new_texts[row] = scrubbed
        if new_texts:
            changed = np.zeros(n, bool)
            changed[list(new_texts)] = True
            rewritten = pa.array([new_texts.get(i) for i in range(n)], pa.large_string())
            table = replace_text(table, pc.if_else(pa.array(changed), rewritten, texts))
        if self.keep_scores:
            table = table.append_column("pii_replacements", pa.array(replacements))
        return table, None
