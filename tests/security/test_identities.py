"""The storage identities against the objects the real code writes: a real dataset version
(documents, manifests, sealed marker, a removal request) written by the corpus side, a real
tokenizer and token version written by the training flow's own functions, and the run
outputs where the train flow puts them. The training identity must be able to do its work
and must never be able to delete or replace a dataset; the pipeline must not touch runs."""

from __future__ import annotations

import json
import uuid

import pytest

from flows.train import TrainParameters
from model.tokenizer import train_tokenizer
from pipeline.dataset import DatasetVersion, write_sealed
from pipeline.removals import RemovalRequest, register_request
from pipeline.schema import documents_from_pylist
from pipeline.settings import ENV_DATA_ROOT
from pipeline.storage import ObjectStore, join
from pipeline.tokenize import tokenize_dataset
from tests.conftest import read_web_sample
from tests.deploy.conftest import POLICIES
from tests.security.iam import allowed

READ, WRITE, DELETE = "s3:GetObject", "s3:PutObject", "s3:DeleteObject"
VERSION = "a1b2c3d4"


def keys(store, bucket: str) -> set[str]:
    return {o.uri[len(bucket) + 1 :] for o in store.list(bucket + "/")}


@pytest.fixture(scope="module")
def policies() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in POLICIES.glob("*.json")}


@pytest.fixture(scope="module")
def written(s3_settings, shared) -> dict[str, set[str]]:
    """Object keys by who writes them, produced by the real code in a fresh bucket laid out
    like s3://tokenmill (the policies' bucket)."""
    store = ObjectStore(s3_settings)
    bucket = f"s3://identities-{uuid.uuid4().hex[:12]}"
    store.ensure_bucket(bucket[len("s3://") :])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV_DATA_ROOT, bucket)
        return write_like_the_code(store, bucket, shared)


def write_like_the_code(store: ObjectStore, bucket: str, shared) -> dict[str, set[str]]:
    dataset = join(bucket, "datasets", "web")
    write_sealed(DatasetVersion(dataset, VERSION, store), documents_from_pylist(read_web_sample(shared, 40)), 20)
    register_request(dataset, RemovalRequest(name="takedown-1", doc_ids=("x",)), store)
    corpus = keys(store, bucket)
    # As the train flow's prepare_tokenizer and tokenize tasks do it.
    tokenizer_uri = join(dataset, "tokenizers", f"{VERSION}-bpe300", "tokenizer.json")
    tokenizer = train_tokenizer(dataset, VERSION, tokenizer_uri, 300, store=store)
    tokenize_dataset(dataset, VERSION, tokenizer, join(dataset, "tokens"), seq_len=32, val_fraction=0.1, store=store)
    training = keys(store, bucket) - corpus
    outputs = TrainParameters(run_name="web-1", dataset_uri=dataset, dataset_version=VERSION).outputs_uri
    run_files = ("report.md", "checkpoints/global_step3/mp_rank_00_model_states.pt")
    runs = {f"{outputs[len(bucket) + 1:]}/{name}" for name in run_files}
    assert corpus and training and all(k.startswith("datasets/web/") for k in corpus | training)
    assert {k.split("/")[2] for k in training} == {"tokenizers", "tokens"}
    assert any("/_sealed/" in k for k in corpus) and any("/_removals/" in k for k in corpus)
    return {"corpus": corpus, "training": training, "runs": runs, "raw": {"raw/crawl-1/part-0.warc.gz"}}


@pytest.mark.parametrize("provider", ["aws", "minio"])
def test_training_identity_trains_but_cannot_harm_a_dataset(provider, policies, written):
    policy = policies[f"{provider}-training"]
    for key in written["corpus"]:
        assert allowed(policy, READ, key), key
        assert not allowed(policy, WRITE, key), f"training may replace {key}"
        assert not allowed(policy, DELETE, key), f"training may delete {key}"
    for key in written["training"]:
        assert allowed(policy, READ, key) and allowed(policy, WRITE, key), key
        assert not allowed(policy, DELETE, key), f"training may delete {key}"
    for key in written["runs"]:
        assert all(allowed(policy, action, key) for action in (READ, WRITE, DELETE)), key
    for key in written["raw"]:
        assert not any(allowed(policy, action, key) for action in (READ, WRITE, DELETE)), key


@pytest.mark.parametrize("provider", ["aws", "minio"])
def test_pipeline_identity_owns_datasets_reads_raw_and_never_touches_runs(provider, policies, written):
    policy = policies[f"{provider}-pipeline"]
    for key in written["corpus"] | written["training"]:
        assert all(allowed(policy, action, key) for action in (READ, WRITE, DELETE)), key
    for key in written["raw"]:
        assert allowed(policy, READ, key) and not allowed(policy, WRITE, key) and not allowed(policy, DELETE, key)
    for key in written["runs"]:
        assert not any(allowed(policy, action, key) for action in (READ, WRITE, DELETE)), key


@pytest.mark.parametrize("provider", ["aws", "minio"])
def test_dataset_reader_reads_datasets_only(provider, policies, written):
    policy = policies[f"{provider}-dataset-reader"]
    for key in written["corpus"] | written["training"]:
        assert allowed(policy, READ, key) and not allowed(policy, WRITE, key) and not allowed(policy, DELETE, key)
    for key in written["runs"] | written["raw"]:
        assert not allowed(policy, READ, key)
