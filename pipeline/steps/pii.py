"""PII scrubbing: typed placeholders in place of emails (plain and obfuscated, "john (at)
example (dot) com"), phone numbers, IP addresses, payment cards, IBANs, US social security
numbers and secrets (private keys, API tokens, password values, URL credentials); every
other character stays as it was.

Two stages keep it cheap. First one RE2 pass per entity type over the whole batch (Arrow,
C++) marks which documents hold a candidate at all, and where; most documents hold none of
most types. Then, for the marked documents only, Python regexes (which have the look-arounds
RE2 lacks) run over those regions (merged, so no character is read twice per type),
validators reject the false ones (Luhn for cards, mod-97 for IBANs, `ipaddress` and the
context for IPs, SSN area/group/serial rules), and the spans are claimed in priority order:
a secret or email is never re-read as a phone.

Linear time on any input: every Python pattern has a bounded match length and fixed-width
look-arounds, so each start position costs a bounded number of steps; private-key blocks are
found by scanning headers and footers once, not by a pattern spanning the block; claims are
kept in a sorted list merged per type. `bench/adversarial.py` measures it.
"""

from __future__ import annotations

import bisect
import heapq
import ipaddress
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.steps.base import Step
from pipeline.steps.budget import check_deadline
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


def iban_ok(candidate: str) -> bool:
    s = candidate.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    rearranged = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def ssn_ok(digits: str) -> bool:
    """SSA rules: area not 000, 666 or 9xx; group not 00; serial not 0000."""
    return len(digits) == 9 and digits[:3] not in ("000", "666") and digits[0] != "9" and digits[3:5] != "00" and digits[5:] != "0000"


class Context:
    """Facts about one document that validators share, computed once on first use: where
    the words that make a dotted quad an IP address stand."""

    def __init__(self, text: str):
        self.text = text
        self._ip_cues: list[int] | None = None

    def near_ip_cue(self, start: int, end: int, radius: int = 80) -> bool:
        if self._ip_cues is None:
            self._ip_cues = [m.start() for m in _IP_CUE.finditer(self.text)]
        i = bisect.bisect_left(self._ip_cues, start - radius)
        return i < len(self._ip_cues) and self._ip_cues[i] <= end + radius


Validator = Callable[[re.Match, Context], "tuple[int, int] | None"]


def _whole(match: re.Match, ctx: Context) -> tuple[int, int]:
    return match.span()


def _card(match: re.Match, ctx: Context) -> tuple[int, int] | None:
    return match.span() if card_ok(re.sub(r"[ -]", "", match.group(0))) else None


def _iban(match: re.Match, ctx: Context) -> tuple[int, int] | None:
    if match.group("glued") is not None:  # "NL45RABO0105881341EUR": the account without its currency
        return match.span("glued") if iban_ok(match.group("glued")) else None
    return match.span() if iban_ok(match.group(0)) else None


def _ssn(match: re.Match, ctx: Context) -> tuple[int, int] | None:
    value = match.group("value")
    if value is not None:  # nine digits after an "SSN" cue: only the number goes
        return match.span("value") if ssn_ok(value) else None
    return match.span() if ssn_ok(re.sub(r"[- .]", "", match.group(0))) else None


def _digit_count(lo: int, hi: int) -> Validator:
    def check(match: re.Match, ctx: Context) -> tuple[int, int] | None:
        n = sum(c.isdigit() for c in match.group(0))
        return match.span() if lo <= n <= hi else None

    return check


# Words near a dotted quad that say it is an address (English and German, the web sample's
# languages): without one, four small numbers are a version or a section number far more
# often than an address ("Lucee 5.3.2.77", "Firefox 2.0.0.16", "- 3.20.1.2 Using ...").
_IP_CUE = re.compile(
    r"(?i)\b(?:ip|ips|ipv[46]|ip-adressen?|address(?:es)?|adressen?|addr|hosts?|hostname|server|dns|resolver|gateway|subnet|netmask"
    r"|cidr|ping|nslookup|traceroute|ssh|telnet|connect(?:ion|ed|s)?|ports?|proxy|router|localhost|inet|ifconfig|endpoints?"
    r"|listen(?:s|ing)?|bind|lookup|whois|firewall|dhcp|vpn|network|tcp|udp|http|https|ftp|logged|clusterip|externalips?)\b"
)
# "version 17.0.4.1", "build 5.3.6.61", "Section 7.8.2.1", "§ 1.2.3.4": a cue word just before
_NOT_IP_BEFORE = re.compile(
    r"(?i)(?:\b(?:version|versions|ver|v|build|release|rev|revision|update|patch|firmware|kernel|section|sec|chapter|clause"
    r"|article|art|paragraph|para|item|rule|step|table|figure|fig|appendix|no|nr)\.?|§|#)\s*[\"'(:]?\s*$"
)


def _ip(public_only: bool) -> Validator:
    def check(match: re.Match, ctx: Context) -> tuple[int, int] | None:
        address = match.group("addr") or match.group("addr6")
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        if match.group("addr") and not _ipv4_in_context(match, ip, ctx):
            return None
        if ip.is_multicast or _network_block(match, ip):
            return None  # "224.0.0.0/24", "10.0.0.0/16": a range, not a host's address
        if public_only:
            mapped = getattr(ip, "ipv4_mapped", None)
            if not (mapped or ip).is_global:
                return None
        return match.span()

    return check


def _network_block(match: re.Match, ip) -> bool:
    """A CIDR suffix on a network address (no host bits set) names a range."""
    rest = match.string[match.end("addr6" if match.group("addr6") else "addr"):match.end()]
    if not rest.startswith("/"):
        return False
    try:
        return ipaddress.ip_network(f"{ip}{rest}", strict=True).num_addresses > 1
    except ValueError:
        return False


def _ipv4_in_context(match: re.Match, ip: ipaddress.IPv4Address, ctx: Context) -> bool:
    """A dotted quad is an address unless it reads as a version, a path part or a section
    number: "openresty/1.9.7.1", "17.0.4.1+1-LTS", "java version: 17.0.4.1", "Section 7.8.2.1";
    loopback/private/reserved ranges, an octet over 99, or an address word nearby say it is."""
    text, start, end = match.string, match.start("addr"), match.end("addr")
    if text.endswith("/", 0, start) and not text.endswith("//", 0, start):
        return False  # a path component (a URL host follows "//")
    if re.match(r"[-+_][0-9A-Za-z]", text[end:end + 2]):
        return False  # a version suffix
    if _NOT_IP_BEFORE.search(text, max(0, start - 24), start):
        return False
    octets = [int(o) for o in match.group("addr").split(".")]
    if str(ip) == "0.0.0.0" or (octets[0] != 0 and not ip.is_global):
        return True  # 127.0.0.1, 10.x, 192.168.x ...; "0.9.7.1" is a version
    return max(octets) > 99 or ctx.near_ip_cue(start, end)


def _cued_phone(match: re.Match, ctx: Context) -> tuple[int, int] | None:
    """A number after "Tel.", "Fax:", "Telefon", "phone" ...: national formats with slashes
    and spaced groups ("Tel. 089 / 5 14 69 76 11", "Fax: +49 (0)30 / 420248-488"); 6 to 15
    digits, and not a date or a time."""
    value = match.group("value")
    digits = sum(c.isdigit() for c in value)
    if not 6 <= digits <= 15 or _DATE_LIKE.match(value):
        return None
    return match.span("value")


_DATE_LIKE = re.compile(r"^[0-9]{1,4}[./-][0-9]{1,2}[./-][0-9]{1,4}$|^[0-9]{1,2}[.:][0-9]{2}\b")


def _secret_value(match: re.Match, ctx: Context) -> tuple[int, int] | None:
    """Secrets given as `name = value` lose only the value."""
    return match.span("value") if match.groupdict().get("value") is not None else match.span()


# values that name or mask a password rather than being one
_PLACEHOLDER = re.compile(r"(?i)^(?:password|passwd|pass|pwd|secret|\*+|x+|\.+|-+|<[^>]*>|\$.*|%.*|\{.*|\[.*|null|none|true|false)$")
# a bare (unquoted) value is a password only with a digit in it: "Password: Forgot your
# password?", "password = var.root_password", "password: String!" are forms and code
_DOTTED_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+$")


def _password(match: re.Match, ctx: Context) -> tuple[int, int] | None:
    for group in ("quoted", "single", "url"):
        value = match.group(group)
        if value is not None:
            return None if _PLACEHOLDER.match(value) else match.span(group)
    value = match.group("bare")
    if _PLACEHOLDER.match(value) or _DOTTED_NAME.match(value) or not any(c.isdigit() for c in value):
        return None
    return match.span("bare")


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"(?:{_OCTET}\.){{3}}{_OCTET}"
_HEX = r"[0-9A-Fa-f]"
_LOCAL = r"A-Za-z0-9._%+!#$&'*=?^`{|}~-"  # RFC 5322 atext without "/": "lore.kernel.org/r/<msg-id>@host" is a URL
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PHONE_END = r"(?![0-9A-Za-z_]|-[0-9A-Za-z])"  # not the head of a longer id: "b116df00-3333-431c-...", SKU "000000-2760-938"
_PHONE_START = r"(?<![0-9A-Fa-f_/-])"  # hex ids stop here; "is415-555-0132" does not

_PHONE_CUES = r"tel|telefon|telephone|telefono|teléfono|téléphone|tél|phone|ph|fax|telefax|mobil|mobile|handy|whatsapp|hotline|fon|call"
_CUED_PHONE = (
    rf"(?i:\b(?:{_PHONE_CUES}))\.?[ \t]{{0,3}}(?:\([A-Za-z .]{{1,12}}\)[ \t]{{0,3}})?(?:[:.]|(?i:no\.?|nr\.?|us|at|unter))?[ \t]{{0,3}}"
    r"(?P<value>\+?\(?[0-9][0-9 ()/.\u2013-]{4,28}[0-9])(?![0-9A-Za-z]|[.,/-][0-9])"
)

_TOKENS = "|".join(
    [
        r"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}\b",  # AWS access key id
        r"(?i:aws_?secret_?access_?key|aws_?secret)[\"']?[ \t]{0,8}[:=][ \t]{0,8}[\"']?(?P<value>[A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])",
        r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}\b|\bgithub_pat_[A-Za-z0-9_]{82}\b",  # GitHub
        r"\bxox[abposr]-[A-Za-z0-9-]{10,250}|https://hooks\.slack\.com/services/[A-Za-z0-9/_-]{20,200}",  # Slack
        r"\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])",  # Google API key
        r"\b(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,247}\b",  # Stripe secret / restricted keys
        r"\bsk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{20,200}T3BlbkFJ[A-Za-z0-9_-]{20,200}|\bsk-[A-Za-z0-9]{48}\b",  # OpenAI
        r"\bglpat-[A-Za-z0-9_-]{20}\b",  # GitLab
        r"\bnpm_[A-Za-z0-9]{36}\b",  # npm
    ]
)
_TOKEN_STARTS = (
    r"\b(?:AKIA|ASIA|ABIA|ACCA|A3T|gh[pousr]_|github_pat_|xox[abposr]-|AIza|[sr]k_(?:live|test)_|sk-|glpat-|npm_)"
    r"|(?i:aws_?secret)|https://hooks\.slack\.com"
)
_PASSWORD_WORDS = r"password|passwd|passwort|passphrase|kennwort|pwd"
_PASSWORD = (
    rf"(?i:(?<![A-Za-z])(?:{_PASSWORD_WORDS}))[\"']?[ \t]{{0,8}}[:=][ \t]{{0,8}}"
    r"(?:\"(?P<quoted>[^\"\n]{1,128})\"|'(?P<single>[^'\s]{1,128})'|(?P<bare>[^\s\"'<>,;)\]}]{1,128}))"
    r"|(?<=://)[^\s/:@]{1,64}:(?P<url>[^\s/@]{1,128})@"  # https://user:secret@host
)

# Obfuscated addresses: "john (at) example (dot) com", "info[at]site.de", and the bare
# "idle dot cartulary at gmail dot com" (then only with a common top-level domain).
_AT_MARK = r"[ \t]{0,3}[\[({<][ \t]{0,2}(?i:at|@)[ \t]{0,2}[\])}>][ \t]{0,3}"
_DOT_MARK = r"(?:[ \t]{0,3}[\[({<][ \t]{0,2}(?i:dot)[ \t]{0,2}[\])}>][ \t]{0,3}|[ \t]{1,3}(?i:dot)[ \t]{1,3}|\.)"
_BARE_DOT = r"[ \t]{1,3}(?i:dot)[ \t]{1,3}"
_COMMON_TLDS = r"com|org|net|edu|gov|io|info|biz|de|uk|at|ch|fr|nl|eu|es|it|pl|ca|au|us|jp|cn|ru|in|br"
_WORD = r"[A-Za-z0-9_%+-]{1,64}"
_OBFUSCATED_EMAIL = (
    rf"(?<![A-Za-z0-9._%+-]){_WORD}(?:{_DOT_MARK}{_WORD}){{0,3}}{_AT_MARK}[A-Za-z0-9-]{{1,63}}(?:{_DOT_MARK}[A-Za-z0-9-]{{1,63}}){{0,3}}"
    rf"{_DOT_MARK}[A-Za-z]{{2,24}}(?![A-Za-z0-9-])"
    rf"|(?<![A-Za-z0-9._%+-]){_WORD}(?:{_BARE_DOT}{_WORD}){{0,3}}[ \t]{{1,3}}(?i:at)[ \t]{{1,3}}[A-Za-z0-9-]{{1,63}}"
    rf"(?:{_BARE_DOT}[A-Za-z0-9-]{{1,63}}){{0,3}}{_BARE_DOT}(?i:{_COMMON_TLDS})(?![A-Za-z0-9-])"
)

_KEY_BEGIN = re.compile(r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
_KEY_END = re.compile(r"-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----")
_KEY_BODY = re.compile(r"[A-Za-z0-9+/=\s]*")
MAX_KEY_CHARS = 20_000  # a header without a footer this close is scrubbed with its base64 body only


def private_keys(text: str, lo: int, hi: int, ctx: Context) -> Iterator[tuple[int, int] | None]:
    """PEM private-key blocks in text[lo:hi]: each header to its footer (the first one after
    it, if within MAX_KEY_CHARS), else to the end of the base64 after it. Headers and footers
    are each found once, so a page of repeated headers costs linear time."""
    footers = [(m.start(), m.end()) for m in _KEY_END.finditer(text, lo, hi)]
    footer_starts = [s for s, _ in footers]
    claimed_to = lo
    for header in _KEY_BEGIN.finditer(text, lo, hi):
        if header.start() < claimed_to:
            continue  # inside the block just claimed
        i = bisect.bisect_left(footer_starts, header.end())
        if i < len(footers) and footer_starts[i] - header.end() <= MAX_KEY_CHARS:
            end = footers[i][1]
        else:
            end = _KEY_BODY.match(text, header.end(), hi).end()
        claimed_to = end
        yield header.start(), end


@dataclass(frozen=True)
class Entity:
    """One kind of PII. `region` is an RE2 pattern whose matches, widened by `before` and
    `after` characters, contain every match of `pattern` (Python `re`, with look-arounds,
    bounded match length), so that `pattern` only ever runs over those regions; `scan`
    replaces the pattern for entities found by scanning (private keys)."""

    label: str  # the placeholder's name: <LABEL>
    region: str
    pattern: re.Pattern | None
    validate: Validator = _whole
    after: int = 2
    before: int = 0
    # a match that fails validation still shields its text from later types (an IBAN with a
    # wrong checksum is not a phone number either)
    shield_invalid: bool = False
    scan: Callable[[str, int, int, Context], Iterator[tuple[int, int]]] | None = field(default=None, compare=False)

    def spans(self, text: str, lo: int, hi: int, ctx: Context) -> Iterator[tuple[int, int, bool]]:
        """(start, end, valid) of the candidates in text[lo:hi], in order."""
        if self.scan is not None:
            for start, end in self.scan(text, lo, hi, ctx):
                yield start, end, True
            return
        for match in self.pattern.finditer(text, lo, hi):
            span = self.validate(match, ctx)
            if span is not None:
                yield span[0], span[1], True
            elif self.shield_invalid:
                yield match.start(), match.end(), False


def entities(public_ips_only: bool = True) -> list[Entity]:
    """All entity types, in the order they claim text."""
    return [
        Entity("SECRET", r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY", None, after=MAX_KEY_CHARS + 300, scan=private_keys),
        Entity("SECRET", _TOKEN_STARTS, re.compile(_TOKENS), _secret_value, after=300),
        Entity("SECRET", rf"(?i)(?:{_PASSWORD_WORDS})[\"']?[ \t]*[:=]|://[^\s/:@]+:[^\s/@]+@", re.compile(_PASSWORD), _password,
               after=150, before=70),
        Entity("EMAIL", rf"[{_LOCAL}]*@(?:[A-Za-z0-9-]+\.)+[A-Za-z][A-Za-z0-9-]*",
               re.compile(rf"(?<![/{_LOCAL}])[{_LOCAL}]{{1,64}}@(?:{_LABEL}\.){{1,8}}[A-Za-z](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?(?![A-Za-z0-9-])")),
        Entity("EMAIL", r"[\[({<][ \t]*(?i:at|@)[ \t]*[\])}>]|[ \t](?i:at)[ \t]+[A-Za-z0-9-]+[ \t]+(?i:dot)[ \t]",
               re.compile(_OBFUSCATED_EMAIL), after=350, before=280),
        Entity("IBAN", r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?",
               re.compile(r"(?<![A-Za-z0-9])(?P<glued>[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30})(?:EUR|CHF|USD|GBP)(?![A-Za-z0-9])"
                          r"|(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![A-Za-z0-9])"), _iban,
               shield_invalid=True),
        Entity("CREDIT_CARD", r"[0-9](?:[ -]?[0-9]){12,}",
               re.compile(r"(?<![0-9-])[1-6][0-9]{3}(?:[ -]?[0-9]){9,15}(?![0-9])"), _card),
        Entity("SSN", r"[0-9]{3}[- .][0-9]{2}[- .][0-9]{4}|(?i:ssn|ss#|social security)",
               re.compile(
                   r"(?<![0-9.-])[0-9]{3}([- .])[0-9]{2}\1[0-9]{4}(?![0-9]|[.-][0-9])"
                   r"|(?i:\b(?:ssn|ss#|social[ \t]+security(?:[ \t]+(?:number|no\.?|#))?))[ \t]{0,3}[:#=-]?[ \t]{0,3}(?:is[ \t]+)?"
                   r"(?P<value>[0-9]{9})(?![0-9])"
               ),
               _ssn, after=60),
        Entity("IP_ADDRESS", r"(?:[0-9A-Fa-f]{0,4}[:.]){2,}[0-9A-Fa-f:.]*(?:%[0-9A-Za-z]+)?(?:/[0-9]{1,3})?",
               re.compile(
                   rf"(?<![0-9A-Za-z.])(?P<addr>{_IPV4})(?:/(?:3[0-2]|[12]?[0-9])(?![0-9]))?(?![0-9A-Za-z]|\.[0-9])"
                   rf"|(?<![0-9A-Za-z:.])(?P<addr6>(?:{_HEX}{{0,4}}:){{2,7}}(?:{_IPV4}|{_HEX}{{0,4}})(?:%[0-9A-Za-z]{{1,16}})?)"
                   r"(?:/(?:12[0-8]|1[01][0-9]|[1-9]?[0-9])(?![0-9]))?(?![0-9A-Za-z:]|\.[0-9])"
               ),
               _ip(public_ips_only), after=3),
        Entity("PHONE", r"[+(0-9][0-9 ().+-]*[0-9]",
               re.compile(
                   rf"{_PHONE_START}(?<!\+)\+[0-9]{{1,3}}(?:[ .-]?\(?[0-9]{{1,4}}\)?){{1,5}}[ .-]?[0-9]{{2,4}}{_PHONE_END}"  # +CC, international
                   rf"|{_PHONE_START}[0-9]{{1,3}}[ .-][2-9][0-9]{{2}}[ .-][2-9][0-9]{{2}}[ .-][0-9]{{4}}{_PHONE_END}"  # CC-NPA-NXX-XXXX
                   rf"|(?:{_PHONE_START}\([2-9][0-9]{{2}}\) ?|{_PHONE_START}[2-9][0-9]{{2}}[ .-]?)[2-9][0-9]{{2}}[ .-][0-9]{{4}}{_PHONE_END}"  # NANP
                   rf"|{_PHONE_START}0[0-9]{{1,4}}[ /-][0-9]{{3,4}}[ -]?[0-9]{{3,4}}{_PHONE_END}"  # national, trunk prefix 0
                   rf"|{_PHONE_START}1[3-9][0-9]{{9}}{_PHONE_END}"  # Chinese mobile
               ),
               _digit_count(7, 15), after=3),
        Entity("PHONE", rf"(?i)\b(?:{_PHONE_CUES})\b", re.compile(_CUED_PHONE), _cued_phone, after=60),
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


def merged_windows(regions: list[tuple[int, int]], before: int, after: int, length: int) -> list[tuple[int, int]]:
    """The regions widened and merged into disjoint sorted windows: every character is read
    at most once per entity, however densely the candidates stand."""
    windows: list[tuple[int, int]] = []
    for start, end in regions:  # regions come sorted by start
        lo, hi = max(0, start - before), min(length, end + after)
        if windows and lo <= windows[-1][1]:
            windows[-1] = (windows[-1][0], max(windows[-1][1], hi))
        else:
            windows.append((lo, hi))
    return windows


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
        regions in this text, None = scan it whole) limits where each entity runs; an entity
        missing from it has no candidate; without `regions` every entity scans the whole text."""
        ctx = Context(text)
        claimed: list[tuple[int, int, str | None]] = []  # sorted by start, non-overlapping
        for k, entity in enumerate(self.entities):
            if regions is None or (k in regions and regions[k] is None):
                windows = [(0, len(text))]
            elif k in regions:
                windows = merged_windows(regions[k], entity.before, entity.after, len(text))
            else:
                continue
            starts = [s for s, _, _ in claimed]
            found: list[tuple[int, int, str | None]] = []
            for lo, hi in windows:
                check_deadline()
                for start, end, valid in entity.spans(text, lo, hi, ctx):
                    i = bisect.bisect_right(starts, start)
                    if (i and claimed[i - 1][1] > start) or (i < len(claimed) and claimed[i][0] < end):
                        continue  # claimed already, by an earlier type
                    if found and found[-1][1] > start:
                        continue  # overlaps this type's previous span (validators may widen a span)
                    found.append((start, end, entity.label if valid else None))
            if found:
                claimed = list(heapq.merge(claimed, found))
        return [s for s in claimed if s[2] is not None]

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
        counters: Counter = Counter()
        for row, regions in per_doc.items():
            scrubbed, counts = self.scrubber.scrub(texts[row].as_py(), regions)
            if counts:
                counters.update(counts)
                replacements[row] = sum(counts.values())
                new_texts[row] = scrubbed
        self.stats.counters.update(counters)
        if new_texts:
            changed = np.zeros(n, bool)
            changed[list(new_texts)] = True
            rewritten = pa.array([new_texts.get(i) for i in range(n)], pa.large_string())
            table = replace_text(table, pc.if_else(pa.array(changed), rewritten, texts))
        if self.keep_scores:
            table = table.append_column("pii_replacements", pa.array(replacements))
        return table, None
