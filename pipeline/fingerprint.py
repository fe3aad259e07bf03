"""What shapes a dataset's content besides its inputs: the code that ran and the files a
configuration points to. Both feed version ids and per-source cache keys, so editing a
filter, a blocklist, the language-ID model or the toxicity training data gives a new version
instead of silently returning the old documents.

`code_fingerprint()` hashes the `pipeline` package's files (sources and package data: the
default filter config, word lists) and the versions of the libraries that shape content
(HTML extraction, Parquet, fastText, hashing). `referenced_files(config)` hashes every local
file a configuration names, and the defaults a step falls back to when a key is null.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
from pathlib import Path
from typing import Any, Callable

import pipeline

# Libraries whose behaviour changes document content (extraction, decoding, hashing, Parquet
# encoding, classifier inference). Orchestration libraries (Prefect, Dask) are left out: a
# scheduler upgrade does not change a single document.
CONTENT_LIBRARIES = ("pyarrow", "numpy", "resiliparse", "fasttext-numpy2-wheel", "xxhash", "zstandard", "scipy", "datasketch", "pyyaml")
_PACKAGE_SUFFIXES = {".py", ".yaml", ".yml", ".json", ".txt", ".tmpl", ".j2"}


class CodeMismatch(RuntimeError):
    """A worker runs other code than the plan it was given was made with (a rolling upgrade)."""


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A short hash of the pipeline package's files and the content libraries' versions.

    Computed once per process (about 60 small files). An editable install and a wheel of the
    same sources give the same value."""
    digest = hashlib.sha256()
    root = Path(pipeline.__file__).resolve().parent
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in _PACKAGE_SUFFIXES and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    for name in CONTENT_LIBRARIES:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{name}=={version}\0".encode())
    return digest.hexdigest()[:16]


def check_code(expected: str, what: str) -> None:
    """Refuse to work for a plan made by other code: its outputs would carry a version id that
    does not describe them."""
    if expected and expected != code_fingerprint():
        raise CodeMismatch(
            f"{what} was planned with code {expected}, this worker runs {code_fingerprint()}: "
            "deploy the same tokenmill build to every worker, or re-run the flow to plan with the new code"
        )


def _default_lid_model() -> Path:
    from pipeline.steps.langid import default_lid_model

    return default_lid_model()


def _default_toxicity_data() -> Path:
    from pipeline.steps.classifier import default_toxicity_data

    return default_toxicity_data()


# Files a step reads when its config key is null (or "default"): (section, key) -> resolver.
# A step that gains such a fallback adds it here, so the fallback's content is versioned too.
DEFAULT_FILES: dict[tuple[str, str], Callable[[], Path]] = {
    ("langid", "model"): _default_lid_model,
    ("toxicity", "data"): _default_toxicity_data,
}


def referenced_files(config: dict[str, Any]) -> dict[str, str]:
    """`{"<section>.<key>": sha256}` for every local file the config names (any string value
    that is a path to a file, at any depth) and every default file an enabled step falls back
    to. A missing default is left out: the step itself reports it when it is built."""
    found: dict[str, str] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")
        elif isinstance(value, str) and len(value) < 4096 and "\n" not in value and Path(value).is_file():
            found[key] = file_sha256(Path(value))

    walk(config, "")
    for (section, key), resolve in DEFAULT_FILES.items():
        part = config.get(section)
        in_use = section in config.get("order", [section]) and isinstance(part, dict) and part.get("enabled", True)
        if not in_use or part.get(key) not in (None, "default"):
            continue
        try:
            found[f"{section}.{key}"] = file_sha256(resolve())
        except FileNotFoundError:
            continue
    return dict(sorted(found.items()))


def file_sha256(path: Path) -> str:
    stat = path.stat()
    return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """Cached by (path, size, mtime): a plan hashes the same model file once per process."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
