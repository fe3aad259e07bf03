"""Validation of every name a user (CLI, Prefect UI parameters, deployment YAML) can give.

User values become object keys, local paths, Slurm batch lines and Kubernetes manifests;
each is checked here against a strict pattern before it is used anywhere, so a newline, a
`..` or a `/` never turns a name into a path outside its folder or into shell/YAML text.
`InvalidName` is a ValueError whose message names the field and says what is allowed.
"""

from __future__ import annotations

import re


class InvalidName(ValueError):
    """A user value that does not match the pattern its field allows."""


def _check(field: str, value: object, pattern: re.Pattern[str], allowed: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value) or ".." in value:
        raise InvalidName(f"{field}: {value!r} is not a valid value ({allowed})")
    return value


# A path segment: letters, digits, `_`, `-`, `.`; not starting with `.` or `-`; no `..`.
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# Dataset names may be nested one level per `/` (`crawl/2024-10`), each level a segment.
_DATASET = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}){0,3}")
_VERSION = re.compile(r"[0-9a-f]{8,64}|latest")
# RFC 1123 label / subdomain (Kubernetes names of namespaces, service accounts, secrets, claims).
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*")
# An OCI image reference: [registry[:port]/]path[:tag][@digest], the grammar of distribution/reference.
_IMAGE = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]{1,5})?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)
# Slurm partition, account, QOS and reservation names (no whitespace, quotes, `=` or `,` lists).
_SLURM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
# An environment variable name (POSIX portable; also Kubernetes' C_IDENTIFIER).
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# An absolute local path: printable characters only (no newline, tab, NUL or other control).
_ABSOLUTE_PATH = re.compile(r"/[^\x00-\x1f\x7f-\x9f\u2028\u2029]{0,4095}")


def segment(value: object, field: str = "name") -> str:
    """One path segment (a run name, a unit, a removal request, a checkpoint tag)."""
    return _check(field, value, _SEGMENT, "letters, digits, '_', '-', '.'; not starting with '.' or '-'; at most 128")


# Names a dataset uses inside its own prefix (pipeline.dataset layout, the train flow's
# `<dataset>/tokens`): a nested dataset `a/tokens` would be dataset `a`'s token dataset.
DATASET_RESERVED = frozenset({"versions", "tokens"})


def dataset_name(value: object, field: str = "dataset") -> str:
    """A dataset name under the data root: up to four `/`-separated segments; below the first,
    none may be a name the dataset layout uses (`versions`, `tokens`, anything starting `_`)."""
    name = _check(field, value, _DATASET, "segments of letters, digits, '_', '-', '.' joined by '/'; no '..'")
    parts = name.split("/")
    for i, part in enumerate(parts[1:], 1):
        if part in DATASET_RESERVED or part.startswith("_"):
            raise InvalidName(f"{field}: {value!r} has the segment {part!r}, which the layout of dataset {'/'.join(parts[:i])!r} uses "
                              "(reserved below the first segment: 'versions', 'tokens', names starting with '_')")  # fmt: skip
    return name


def version_id(value: object, field: str = "version") -> str:
    """A dataset version id (lowercase hex) or `latest`."""
    return _check(field, value, _VERSION, "a hex version id or 'latest'")


def dns1123_label(value: object, field: str) -> str:
    """A Kubernetes namespace or other RFC 1123 label."""
    return _check(field, value, _DNS1123_LABEL, "lowercase letters, digits and '-', at most 63, starting and ending alphanumeric")


def dns1123_subdomain(value: object, field: str) -> str:
    """A Kubernetes object name (secret, service account, persistent volume claim)."""
    if isinstance(value, str) and len(value) > 253:
        raise InvalidName(f"{field}: longer than 253 characters")
    return _check(field, value, _DNS1123_SUBDOMAIN, "lowercase RFC 1123 subdomain: letters, digits, '-' and '.'")


def image_reference(value: object, field: str = "image") -> str:
    """A container image reference (`registry:5000/org/name:tag@sha256:…`)."""
    if isinstance(value, str) and len(value) > 512:
        raise InvalidName(f"{field}: longer than 512 characters")
    return _check(field, value, _IMAGE, "an image reference such as 'ghcr.io/org/trainer:1.2' or '…@sha256:<digest>'")


def slurm_name(value: object, field: str = "partition") -> str:
    """A Slurm partition, account, QOS or reservation name."""
    return _check(field, value, _SLURM_NAME, "letters, digits, '_', '-', '.', at most 64")


def env_name(value: object, field: str = "environment variable") -> str:
    """An environment variable name (a `--export` list entry, a container `env` name)."""
    return _check(field, value, _ENV_NAME, "letters, digits and '_', not starting with a digit")


def absolute_path(value: object, field: str) -> str:
    """An absolute local path without control characters or `..` segments (run directories,
    mount paths, interpreters): safe as one argv entry or one manifest field."""
    if isinstance(value, str) and ".." in value.split("/"):
        raise InvalidName(f"{field}: {value!r} has a '..' segment")
    if not isinstance(value, str) or not _ABSOLUTE_PATH.fullmatch(value):
        raise InvalidName(f"{field}: {value!r} is not a valid value (an absolute path without control characters)")
    return value


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def storage_uri(value: object, field: str) -> str:
    """A user-given storage location (`s3://bucket/key/prefix` or a local path) that becomes
    object keys and local paths: no control characters, no `.`/`..` segments, a valid bucket."""
    if not isinstance(value, str) or not value or _CONTROL.search(value):
        raise InvalidName(f"{field}: {value!r} is not a valid value (an s3:// URI or a path without control characters)")
    path = value[len("s3://") :] if value.startswith("s3://") else value
    segments = path.split("/")
    if any(s in (".", "..") for s in segments):
        raise InvalidName(f"{field}: {value!r} has a '.' or '..' segment")
    if value.startswith("s3://") and not _BUCKET.fullmatch(segments[0]):
        raise InvalidName(f"{field}: {value!r} does not start with a valid bucket name")
    return value
