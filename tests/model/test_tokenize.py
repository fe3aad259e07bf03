from __future__ import annotations

import numpy as np
import pytest

from flows.cli import main as cli
from model.data import ShardedTokenStream, TokenDataset, validation_rows
from model.tokenizer import load_tokenizer
from pipeline.dataset import DatasetVersion, read_parquet
from pipeline.storage import StorageError
from pipeline.tokenize import is_validation, pack, tokenize_dataset
from tests.model.conftest import SEQ_LEN, write_source_dataset


def test_token_shards_keep_every_token_and_split_by_document_id(store, token_dataset, source_docs, tokenizer_uri):
    tokens = TokenDataset(token_dataset["dataset"], "latest", store)
    extra = tokens.manifest.extra
    assert tokens.version.version == token_dataset["version"] and tokens.seq_len == SEQ_LEN
    assert extra["tokenizer"] == tokenizer_uri and extra["splits"] == token_dataset["splits"]

    tok = load_tokenizer(tokenizer_uri, store)
    expected = {"train": [], "val": []}
    for doc in source_docs:
        split = "val" if is_validation(doc["id"], 0.05) else "train"
        expected[split].extend(tok.encode(doc["text"], add_special_tokens=False).ids + [0])
    assert 0 < len(expected["val"]) < len(expected["train"])
    for split in ("train", "val"):
        counts = extra["splits"][split]
        assert counts["tokens"] == len(expected[split])
        # Rows in manifest order, pads removed, are exactly the documents joined by EOS.
        rows = np.concatenate([read_parquet(store, s["uri"]).column("tokens").combine_chunks().flatten().to_numpy()
                               for s in tokens.manifest.shards if s["unit"].startswith(f"{split}.")])  # fmt: skip
        assert len(rows) == counts["sequences"] * (SEQ_LEN + 1)
        assert (rows != 1).sum() == counts["tokens"] and (rows == 1).sum() == counts["pad_tokens"]
        assert rows[rows != 1].tolist() == expected[split]


def test_tokenize_is_idempotent_and_refuses_unsealed_input(store, bucket, token_dataset, source_dataset, tokenizer_uri):
    version = DatasetVersion(token_dataset["dataset"], token_dataset["version"], store)
    seq_before = version.manifest().seq
    again = tokenize_dataset(source_dataset.dataset_uri, source_dataset.version, tokenizer_uri, token_dataset["dataset"], SEQ_LEN,
                             val_fraction=0.05, store=store, rows_per_group=128)  # fmt: skip
    assert again == token_dataset and version.manifest().seq == seq_before
    open_version = DatasetVersion(f"{bucket}/docs", "open", store)
    open_version.commit_unit("u", [])
    with pytest.raises(StorageError, match="not sealed"):
        tokenize_dataset(open_version.dataset_uri, "open", tokenizer_uri, f"{bucket}/tokens", SEQ_LEN, store=store)


def test_pack_pads_only_the_last_row():
    rows, pads = pack(np.arange(2, 12, dtype=np.int32), 3, pad=1)
    assert rows.tolist() == [[2, 3, 4, 5], [6, 7, 8, 9], [10, 11, 1, 1]] and pads == 2


def test_rank_streams_are_disjoint_cover_the_data_and_resume_exactly(store, token_dataset):
    tokens = TokenDataset(token_dataset["dataset"], token_dataset["version"], store)
    groups = tokens.row_groups("train")[:6]
    width = SEQ_LEN + 1
    total = sum(g.rows for g in groups)
    streams = [ShardedTokenStream(store, groups, width, rank=r, world=2, seed=7) for r in range(2)]
    try:
        own = [sum(groups[i].rows for i in s._plan(0)) for s in streams]
        seen = [s.next_batch(own[r]) for r, s in enumerate(streams)]
        assert sum(own) == total
        everything = [tuple(r) for g in groups for r in streams[0].reader.read(g)]
        assert sorted(tuple(r) for part in seen for r in part) == sorted(everything)  # one epoch: each row once
        # Resume: a fresh stream loaded with the saved position yields the very same next batches.
        streams[0].next_batch(5)
        saved = streams[0].state_dict()
        expected = [streams[0].next_batch(50) for _ in range(3)]
        fresh = ShardedTokenStream(store, groups, width, rank=0, world=2, seed=7)
        fresh.load_state_dict(saved)
        assert all((fresh.next_batch(50) == e).all() for e in expected)
        fresh.close()
        with pytest.raises(ValueError, match="rank 0 of 2"):
            ShardedTokenStream(store, groups, width, rank=1, world=2, seed=7).load_state_dict(saved)
        with pytest.raises(ValueError, match="row groups"):
            ShardedTokenStream(store, groups[:1], width, rank=0, world=2, seed=7)
    finally:
        for s in streams:
            s.close()
    val = [validation_rows(store, tokens.row_groups("val"), width, rank=r, world=2, count=10) for r in range(2)]
    assert [v.shape for v in val] == [(10, width), (10, width)] and not (val[0] == val[1]).all()


def test_cli_trains_a_tokenizer_and_tokenizes(store, bucket, source_docs, capsys):
    small = write_source_dataset(store, f"{bucket}/docs", source_docs[:12], 6)
    assert cli(["tokenizer", "train", "--dataset", small.dataset_uri, "--out", f"{bucket}/tok/", "--vocab-size", "300"]) == 0
    tok_uri = capsys.readouterr().out.strip()
    assert tok_uri == f"{bucket}/tok/tokenizer.json" and store.exists(tok_uri)
    assert cli(["tokenize", "--dataset", small.dataset_uri, "--tokenizer", tok_uri, "--out", f"{bucket}/tokens", "--seq-len", "16"]) == 0
    tokens = TokenDataset(f"{bucket}/tokens", "latest", store)
    assert tokens.seq_len == 16 and tokens.manifest.extra["splits"]["train"]["docs"] + tokens.manifest.extra["splits"]["val"]["docs"] == 12
    assert cli(["tokenize", "--dataset", small.dataset_uri, "--tokenizer", f"{bucket}/missing.json", "--out", f"{bucket}/t2"]) == 2
    assert "tokenizer not found" in capsys.readouterr().err
