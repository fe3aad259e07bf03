from __future__ import annotations

from collections import Counter

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


def test_every_rank_count_sees_the_whole_split_once_per_epoch(store, token_dataset):
    """World sizes 1-8 over the real token shards (row groups of very different sizes): the
    ranks step in lockstep, one sequence per rank per step; the sequences they take while in
    epoch 0 are every training sequence exactly once, and every rank enters epoch 1 within
    one step of the others."""
    tokens = TokenDataset(token_dataset["dataset"], token_dataset["version"], store)
    groups = tokens.row_groups("train")
    assert len({g.rows for g in groups}) > 1  # unequal groups: the case that dealing groups got wrong
    width = SEQ_LEN + 1
    reader = ShardedTokenStream(store, groups, width, rank=0, world=1, seed=7).reader
    everything = Counter(tuple(r) for g in groups for r in reader.read(g))
    total = sum(everything.values())
    for world in range(1, 9):
        streams = [ShardedTokenStream(store, groups, width, rank=r, world=world, seed=7) for r in range(world)]
        try:
            seen: Counter = Counter()
            entered_epoch_1 = {}
            for step in range(-(-total // world) + 1):
                for rank, stream in enumerate(streams):
                    before = stream.epoch
                    row = stream.next_batch(1)[0]
                    if before == 0:
                        seen[tuple(row)] += 1
                    if stream.epoch == 1 and rank not in entered_epoch_1:
                        entered_epoch_1[rank] = step
            assert seen == everything, f"world {world}"
            assert len(entered_epoch_1) == world and max(entered_epoch_1.values()) - min(entered_epoch_1.values()) <= 1
        finally:
            for stream in streams:
                stream.close()


def test_stream_resumes_exactly_and_skips_by_arithmetic(store, token_dataset):
    tokens = TokenDataset(token_dataset["dataset"], token_dataset["version"], store)
    groups = tokens.row_groups("train")
    width = SEQ_LEN + 1
    stream = ShardedTokenStream(store, groups, width, rank=0, world=3, seed=7)
    try:
        stream.next_batch(5)
        saved = stream.state_dict()
        expected = [stream.next_batch(50) for _ in range(3)]
        fresh = ShardedTokenStream(store, groups, width, rank=0, world=3, seed=7)
        fresh.load_state_dict(saved)
        assert all((fresh.next_batch(50) == e).all() for e in expected)
        # Skipping n sequences lands where reading them would: across the epoch boundary too.
        fresh.load_state_dict(saved)
        n = stream.rows_per_epoch + 17
        fresh.skip(n)
        stream.load_state_dict(saved)
        stream.next_batch(n)
        assert (fresh.epoch, fresh.offset) == (stream.epoch, stream.offset) == (1, 22)
        assert (fresh.next_batch(8) == stream.next_batch(8)).all()
        fresh.close()
        with pytest.raises(ValueError, match="rank 0 of 3"):
            ShardedTokenStream(store, groups, width, rank=1, world=3, seed=7).load_state_dict(saved)
        with pytest.raises(ValueError, match="training sequences but there are"):
            ShardedTokenStream(store, groups[:1], width, rank=0, world=groups[0].rows + 1, seed=7)
    finally:
        stream.close()
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
