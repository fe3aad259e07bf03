"""The deployment files are checked as text and data: these tests need no S3 server, so the
session-wide S3 fixture of tests/conftest.py is replaced here by one that starts nothing."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from pipeline import settings

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
K8S = REPO / "infra" / "k8s"
POLICIES = REPO / "infra" / "policies"
PREFECT_YAML = REPO / "prefect.yaml"


@pytest.fixture(scope="session")
def s3_env():
    """Overrides the autouse fixture of tests/conftest.py: nothing here talks to storage."""
    yield


def tokenmill_env_names() -> set[str]:
    """Every variable pipeline/settings.py names (its ENV_* constants)."""
    return {value for name, value in vars(settings).items() if name.startswith("ENV_") and isinstance(value, str)}


def console_scripts() -> set[str]:
    return {ep.name for ep in importlib.metadata.entry_points(group="console_scripts")}


def command_problems(command: list[str]) -> list[str]:
    """Why a container command would not start in our images: its program must be a console
    script installed by the project's dependencies, or `python -m` with an importable module."""
    if not command:
        return ["empty command"]
    program = command[0]
    if program in ("python", "python3"):
        if len(command) >= 3 and command[1] == "-m":
            if importlib.util.find_spec(command[2]) is None:
                return [f"python -m {command[2]}: no such module"]
            return []
        return [f"python without -m: {command}"]
    if program not in console_scripts():
        return [f"{program}: not a console script of any installed distribution"]
    return []


def load_yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def prefect_yaml() -> dict | None:
    return yaml.safe_load(PREFECT_YAML.read_text()) if PREFECT_YAML.exists() else None


IMAGE_TAG = re.compile(
    r"^(?P<name>[^:@\s]+(?::\d+)?(?:/[^:@\s]+)*)(?::(?P<tag>[\w][\w.-]*))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


def image_pin_problem(image: str) -> str | None:
    """An image is pinned when it names a digest, or a tag that is not `latest` and carries a
    version number."""
    match = IMAGE_TAG.match(image)
    if not match:
        return f"{image}: not an image reference"
    if match.group("digest"):
        return None
    tag = match.group("tag")
    if not tag or tag == "latest" or not re.search(r"\d", tag):
        return f"{image}: not pinned to a version (tag {tag!r})"
    return None
