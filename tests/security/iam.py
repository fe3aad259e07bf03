"""Evaluation of an S3 identity policy (the IAM grammar MinIO implements too) for one request:
an explicit Deny wins, then any Allow; `*` and `?` in actions and resources match any run of
characters / one character, `/` included. Statements with a Condition are the plain-HTTP
denials: the requests evaluated here are over TLS, so they do not apply."""

from __future__ import annotations

import re
from functools import lru_cache

BUCKET_ARN = "arn:aws:s3:::tokenmill"


@lru_cache(maxsize=None)
def _pattern(glob: str) -> re.Pattern[str]:
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in glob)
    return re.compile(regex, re.IGNORECASE | re.DOTALL)


def _listed(value) -> list[str]:
    return value if isinstance(value, list) else [value]


def _applies(statement: dict, action: str, resource: str) -> bool:
    if "Condition" in statement:
        return False
    return any(_pattern(a).fullmatch(action) for a in _listed(statement["Action"])) and any(
        _pattern(r).fullmatch(resource) for r in _listed(statement["Resource"])
    )


def allowed(policy: dict, action: str, key: str) -> bool:
    """May `action` be done on object `key` of the policies' bucket?"""
    resource = f"{BUCKET_ARN}/{key}"
    matching = [s for s in policy["Statement"] if _applies(s, action, resource)]
    if any(s["Effect"] == "Deny" for s in matching):
        return False
    return any(s["Effect"] == "Allow" for s in matching)
