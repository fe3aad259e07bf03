"""Session fixtures for the model tests: one small source dataset, one tokenizer and one
token dataset on the real S3 server, shared by every test here (tokenizing is the slow part)."""

from __future__ import annotations

import uuid

import pytest

from model.tokenizer import train_tokenizer
from pipeline.dataset import DatasetVersion, write_sealed
from pipeline.schema import documents_from_pylist
from pipeline.storage import ObjectStore
from pipeline.tokenize import tokenize_dataset
from tests.conftest import read_web_sample

DOCS = 120
DOCS_PER_SHARD = 40
VOCAB = 1024
SEQ_LEN = 32


def write_source_dataset(store: ObjectStore, uri: str, rows: list[dict], per_shard: int) -> DatasetVersion:
    version = DatasetVersion(uri, "v1", store)
    write_sealed(version, documents_from_pylist(rows), per_shard)
    return version


@pytest.fixture(scope="session")
def model_bucket(s3_settings) -> str:
    store = ObjectStore(s3_settings)
    name = f"model-{uuid.uuid4().hex[:10]}"
    store.ensure_bucket(name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def source_docs(shared) -> list[dict]:
    return read_web_sample(shared, DOCS)


@pytest.fixture(scope="session")
def source_dataset(s3_settings, model_bucket, source_docs) -> DatasetVersion:
    return write_source_dataset(ObjectStore(s3_settings), f"{model_bucket}/docs", source_docs, DOCS_PER_SHARD)


@pytest.fixture(scope="session")
def tokenizer_uri(s3_settings, model_bucket, source_dataset) -> str:
    return train_tokenizer(source_dataset.dataset_uri, source_dataset.version, f"{model_bucket}/tokenizer/", VOCAB, store=ObjectStore(s3_settings))


@pytest.fixture(scope="session")
def token_dataset(s3_settings, model_bucket, source_dataset, tokenizer_uri) -> dict:
    """Packed SEQ_LEN+1 sequences; small row groups so two ranks each get several."""
    return tokenize_dataset(
        source_dataset.dataset_uri, source_dataset.version, tokenizer_uri, f"{model_bucket}/tokens", SEQ_LEN,
        val_fraction=0.05, store=ObjectStore(s3_settings), rows_per_group=128,
    )  # fmt: skip
