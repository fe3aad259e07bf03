"""Byte-level BPE tokenizer trained from a dataset version with Hugging Face `tokenizers`.

Special tokens (ids fixed, first in the vocabulary):

- ``<|endoftext|>`` (id 0): end of document. Token shards join documents with it, so the
  model learns where one text stops; it doubles as BOS for generation.
- ``<|pad|>`` (id 1): fills the tail of the last packed sequence of a shard. The trainer
  ignores targets equal to it, so padding never contributes to the loss.

Byte-level means every string encodes (no unknown token): the 256 byte symbols are always in
the alphabet, and merges are learned on top of them.
"""

from __future__ import annotations

from typing import Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from pipeline.dataset import DatasetVersion
from pipeline.storage import ObjectStore

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN]
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)


def _texts(version: DatasetVersion, max_docs: int | None) -> Iterator[list[str]]:
    seen = 0
    for batch in version.iter_batches(columns=["text"], batch_size=1024):
        texts = batch.column(0).to_pylist()
        if max_docs is not None:
            texts = texts[: max_docs - seen]
        seen += len(texts)
        yield texts
        if max_docs is not None and seen >= max_docs:
            return


def new_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps offsets byte-exact; the processor adds no BOS/EOS by itself.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def train_tokenizer(dataset_uri: str, version: str, out_uri: str, vocab_size: int, *, store: ObjectStore | None = None, max_docs: int | None = None, min_frequency: int = 2) -> str:
    """Train a byte-level BPE on the `text` column of a dataset version and save
    `tokenizer.json` at `out_uri` (a local path or s3:// URI; a URI ending in `/` or without
    `.json` is taken as a folder). Returns the URI of the saved file."""
    if vocab_size < MIN_VOCAB:
        raise ValueError(f"vocab_size must be at least {MIN_VOCAB} (256 bytes + special tokens), got {vocab_size}")
    store = store or ObjectStore()
    source = DatasetVersion(dataset_uri, version, store)
    if not source.shard_uris():
        raise ValueError(f"{source.uri} has no committed shards to train a tokenizer on")
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_texts(source, max_docs), trainer=trainer)
    uri = out_uri if out_uri.endswith(".json") else out_uri.rstrip("/") + "/tokenizer.json"
    store.put_bytes(uri, tok.to_str().encode(), content_type="application/json")
    return uri


def load_tokenizer(uri: str, store: ObjectStore | None = None) -> Tokenizer:
    """Load a `tokenizer.json` written by `train_tokenizer` (checks the special tokens)."""
    store = store or ObjectStore()
    tok = Tokenizer.from_str(store.get_bytes(uri).decode())
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(token) != expected_id:
            raise ValueError(f"{uri}: special token {token!r} must have id {expected_id} (not a tokenmill tokenizer?)")
    return tok


def eos_id(tok: Tokenizer) -> int:
    return tok.token_to_id(EOS_TOKEN)


def pad_id(tok: Tokenizer) -> int:
    return tok.token_to_id(PAD_TOKEN)
