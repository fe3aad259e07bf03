"""infra/policies/: least privilege, the same grants for AWS and MinIO, and the bucket and
prefixes the code writes under TOKENMILL_DATA_ROOT (as compose and the ConfigMap set it).
tests/security/test_identities.py checks the same policies against the keys the real code
writes."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from pipeline.dataset import resolve_dataset_uri
from pipeline.settings import ENV_DATA_ROOT
from tests.deploy.conftest import DOCKER, K8S, POLICIES, REPO

READ_ACTIONS = {"s3:GetObject"}
WRITE_ACTIONS = {"s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}
BUCKET_ADMIN = {"s3:CreateBucket", "s3:DeleteBucket", "s3:PutBucketPolicy", "s3:DeleteBucketPolicy", "s3:PutBucketAcl"}


def load(name: str) -> dict:
    return json.loads((POLICIES / name).read_text())


def allowed(policy: dict) -> dict[str, set[str]]:
    """Resource ARN -> allowed actions."""
    grants: dict[str, set[str]] = {}
    for statement in policy["Statement"]:
        if statement["Effect"] != "Allow":
            continue
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for resource in resources:
            grants.setdefault(resource, set()).update(actions)
    return grants


@pytest.fixture(scope="module")
def data_root() -> str:
    """TOKENMILL_DATA_ROOT as .env.example, the compose default and the ConfigMap set it (one value)."""
    env_example = dict(
        line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines() if line and not line.startswith("#")
    )
    configmaps = [d for d in yaml.safe_load_all((K8S / "configmap.yaml").read_text()) if d]
    compose_default = re.search(r"TOKENMILL_DATA_ROOT: \$\{TOKENMILL_DATA_ROOT:-([^}]+)\}", (DOCKER / "compose.yaml").read_text())
    (root,) = {env_example[ENV_DATA_ROOT], compose_default.group(1), *(c["data"][ENV_DATA_ROOT] for c in configmaps)}
    assert root.startswith("s3://")
    return root


@pytest.fixture(scope="module")
def layout(data_root, monkeypatch_module) -> dict[str, str]:
    """bucket, and the key prefixes the code uses for datasets, training outputs and raw input."""
    monkeypatch_module.setenv(ENV_DATA_ROOT, data_root)
    bucket = data_root[len("s3://") :].partition("/")[0]

    def key_prefix(uri: str) -> str:
        return uri[len(f"s3://{bucket}/") :]

    datasets = key_prefix(resolve_dataset_uri("web")).rsplit("/", 1)[0]
    # The train flow's output default and the scheduled refresh's input: `join(data_root(), "runs"/"raw", ...)`.
    assert re.search(r'join\(data_root\(\), "runs", self\.run_name\)', (REPO / "flows" / "train.py").read_text())
    assert re.search(r'join\(data_root\(\), "raw", "\*\*"\)', (REPO / "flows" / "serve.py").read_text())
    root_prefix = key_prefix(data_root + "/").rstrip("/")
    runs, raw = (f"{root_prefix}/{p}".lstrip("/") for p in ("runs", "raw"))
    return {"bucket": bucket, "datasets": datasets, "runs": runs, "raw": raw}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.parametrize("provider", ["aws", "minio"])
def test_pipeline_reads_raw_input_and_writes_only_datasets(provider, layout):
    arn = f"arn:aws:s3:::{layout['bucket']}"
    grants = allowed(load(f"{provider}-pipeline.json"))
    objects = {resource: actions for resource, actions in grants.items() if resource != arn}
    assert objects.pop(f"{arn}/{layout['raw']}/*") == READ_ACTIONS, "raw input must be read-only"
    assert objects.pop(f"{arn}/{layout['datasets']}/*") >= READ_ACTIONS | WRITE_ACTIONS
    assert not objects, f"grants beyond raw/ and datasets/ (runs/ is the training identity's): {objects}"
    assert "s3:ListBucket" in grants[arn], "HeadBucket (ObjectStore.check) and listing need s3:ListBucket"
    every_action = set().union(*grants.values())
    assert not any(a.endswith("*") for a in every_action), "no wildcard actions"
    assert not every_action & BUCKET_ADMIN


@pytest.mark.parametrize("provider", ["aws", "minio"])
def test_training_reads_datasets_creates_tokens_and_writes_only_runs(provider, layout):
    arn = f"arn:aws:s3:::{layout['bucket']}"
    policy = load(f"{provider}-training.json")
    grants = allowed(policy)
    datasets = f"{arn}/{layout['datasets']}"
    # The train flow's defaults: tokens at <dataset>/tokens, tokenizers at <dataset>/tokenizers/...
    train_source = (REPO / "flows" / "train.py").read_text()
    assert 'join(params.dataset_uri, "tokens")' in train_source and 'join(params.dataset_uri, "tokenizers"' in train_source
    objects = {resource: actions for resource, actions in grants.items() if resource != arn}
    assert objects.pop(f"{datasets}/*") == READ_ACTIONS
    for derived in ("tokens", "tokenizers"):
        create_only = {"s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"}
        assert objects.pop(f"{datasets}/*/{derived}/*") == create_only
    assert objects.pop(f"{arn}/{layout['runs']}/*") >= READ_ACTIONS | WRITE_ACTIONS
    assert not objects, f"grants beyond datasets/ (read), tokens, tokenizers and runs/: {objects}"
    (deny,) = [s for s in policy["Statement"] if s["Effect"] == "Deny" and "Condition" not in s]
    assert set(deny["Action"]) >= {"s3:DeleteObject"} and deny["Resource"] == [f"{datasets}/*"]
    every_action = set().union(*grants.values())
    assert not any(a.endswith("*") for a in every_action) and not every_action & BUCKET_ADMIN


@pytest.mark.parametrize("provider", ["aws", "minio"])
def test_dataset_reader_only_reads_datasets(provider, layout):
    arn = f"arn:aws:s3:::{layout['bucket']}"
    grants = allowed(load(f"{provider}-dataset-reader.json"))
    assert set(grants) == {arn, f"{arn}/{layout['datasets']}/*"}
    assert grants[f"{arn}/{layout['datasets']}/*"] == READ_ACTIONS
    assert not set().union(*grants.values()) & (WRITE_ACTIONS | BUCKET_ADMIN)


@pytest.mark.parametrize("name", ["pipeline", "training", "dataset-reader"])
def test_aws_and_minio_grant_the_same(name):
    aws, minio = load(f"aws-{name}.json"), load(f"minio-{name}.json")
    assert [s for s in aws["Statement"] if "Condition" not in s] == minio["Statement"]
    (deny,) = [s for s in aws["Statement"] if "Condition" in s]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_every_policy_file_is_tested():
    assert {p.name for p in POLICIES.glob("*.json")} == {
        f"{provider}-{name}.json" for provider in ("aws", "minio") for name in ("pipeline", "training", "dataset-reader")
    }
