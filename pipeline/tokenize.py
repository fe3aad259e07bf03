"""Dataset version → packed token shards for training (no torch here).

Each document is encoded with the tokenizer and followed by EOS; a document goes to the
validation split when a hash of its id falls below `val_fraction` (deterministic, so a re-run
and every machine agree). Per split, the token stream of one input shard is cut into rows of
exactly `seq_len + 1` tokens (inputs are the first `seq_len`, targets the last `seq_len`).
The last row of a stream is filled up with PAD, which the trainer ignores: no token is lost.

Layout: one token dataset version whose units are `<split>.<input unit>`; its shards have
one column `tokens: fixed_size_list<int32>[seq_len + 1]`, written in row groups of
`rows_per_group` rows (the training loader's unit of per-rank sharding). Unit counts and the
sealed manifest's `extra` carry token counts.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Callable

import numpy as np
import pyarrow as pa

from model.tokenizer import eos_id, load_tokenizer, pad_id
from pipeline.dataset import DatasetVersion, ShardWriter, config_hash, make_version_id, read_parquet_batches, unit_name
from pipeline.fingerprint import code_fingerprint
from pipeline.storage import ObjectStore, StorageError

CODE_VERSION = "tokenize/1"
SPLITS = ("train", "val")
TOKENS_COLUMN = "tokens"
TARGET_GROUP_BYTES = 4 * 1024 * 1024


def token_schema(seq_len: int) -> pa.Schema:
    return pa.schema(
        [pa.field(TOKENS_COLUMN, pa.list_(pa.int32(), seq_len + 1), nullable=False)],
        metadata={"tokenmill.schema": "tokens", "tokenmill.seq_len": str(seq_len)},
    )


def is_validation(doc_id: str, val_fraction: float) -> bool:
    """Stable split: the first 8 bytes of blake2b(id) as a fraction of 2**64."""
    h = int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "big")
    return h < val_fraction * 2**64


def pack(stream: np.ndarray, seq_len: int, pad: int) -> tuple[np.ndarray, int]:
    """Cut a 1-D token stream into rows of seq_len+1; pad the last row. Returns (rows, pad count)."""
    width = seq_len + 1
    n_rows = -(-len(stream) // width)
    padded = np.full(n_rows * width, pad, dtype=np.int32)
    padded[: len(stream)] = stream
    return padded.reshape(n_rows, width), n_rows * width - len(stream)


def rows_table(rows: np.ndarray, schema: pa.Schema) -> pa.Table:
    flat = pa.array(rows.reshape(-1), type=pa.int32())
    return pa.Table.from_arrays([pa.FixedSizeListArray.from_arrays(flat, rows.shape[1])], schema=schema)


@functools.lru_cache(maxsize=4)
def _tokenizer(uri: str, etag: str, settings_key: str):
    """One parsed tokenizer per (URI, content) in a process: per-shard tasks share it.
    `settings_key` keeps tokenizers of different storage endpoints apart."""
    return load_tokenizer(uri, ObjectStore())


def plan_tokenization(
    dataset_uri: str,
    version: str,
    tokenizer_uri: str,
    out_uri: str,
    seq_len: int,
    val_fraction: float = 0.01,
    *,
    store: ObjectStore | None = None,
    rows_per_group: int | None = None,
) -> dict:
    """What tokenizing a sealed dataset version means: the token version id (derived from the
    source shards, tokenizer and settings, so a re-run finds the same version) and one entry
    per input shard. Plain JSON, so that it can be handed to mapped tasks anywhere."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    store = store or ObjectStore()
    source = DatasetVersion(dataset_uri, version, store)
    source_manifest = source.manifest()
    if not source_manifest.sealed:
        raise StorageError(f"{source.uri} is not sealed; tokenize a finished dataset version")
    tok_info = store.head(tokenizer_uri)
    if tok_info is None:
        raise FileNotFoundError(f"tokenizer not found: {tokenizer_uri}")
    rows_per_group = rows_per_group or max(16, TARGET_GROUP_BYTES // ((seq_len + 1) * 4))
    config = {"seq_len": seq_len, "val_fraction": val_fraction, "rows_per_group": rows_per_group, "tokenizer_etag": tok_info.etag}
    inputs = [{"uri": s["uri"], "sha256": s["sha256"]} for s in source_manifest.shards]
    return {
        "source": {"dataset": dataset_uri, "version": version},
        "out_uri": out_uri,
        "version": make_version_id(inputs, config, f"{CODE_VERSION}:{code_fingerprint()}"),  # a code change re-tokenizes
        "tokenizer": tokenizer_uri,
        "config": config,
        "shards": [{"uri": s["uri"], "unit": unit_name(s["uri"])} for s in source_manifest.shards],
    }


def tokenize_shard(plan: dict, shard: dict, *, store: ObjectStore | None = None) -> dict:
    """Tokenize one input shard into a train and a val unit of the plan's token version;
    returns the counts per split. Idempotent: a shard whose units are committed is not read."""
    store = store or ObjectStore()
    out = DatasetVersion(plan["out_uri"], plan["version"], store)
    units = {split: f"{split}.{shard['unit']}" for split in SPLITS}
    done = {split: out.unit(unit) for split, unit in units.items()}
    if all(done.values()):
        return {split: record["counts"] for split, record in done.items()}
    config = plan["config"]
    seq_len = config["seq_len"]
    tok = _tokenizer(plan["tokenizer"], config["tokenizer_etag"], repr(store))
    eos, pad = eos_id(tok), pad_id(tok)
    streams: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    docs = {s: 0 for s in SPLITS}
    eos_row = np.asarray([eos], dtype=np.int32)
    for batch in read_parquet_batches(store, shard["uri"], columns=["id", "text"], batch_size=1024):
        ids = batch.column(0).to_pylist()
        encodings = tok.encode_batch(batch.column(1).to_pylist(), add_special_tokens=False)
        for doc_id, enc in zip(ids, encodings):
            split = "val" if is_validation(doc_id, config["val_fraction"]) else "train"
            streams[split] += (np.asarray(enc.ids, dtype=np.int32), eos_row)
            docs[split] += 1
    schema = token_schema(seq_len)
    counts = {}
    for split in SPLITS:
        stream = np.concatenate(streams[split]) if streams[split] else np.zeros(0, np.int32)
        rows, pad_tokens = pack(stream, seq_len, pad)
        c = {"split": split, "docs": docs[split], "tokens": int(len(stream)), "sequences": int(len(rows)), "pad_tokens": int(pad_tokens)}
        if not done[split]:
            with ShardWriter(out, units[split], schema=schema) as writer:
                for start in range(0, len(rows), config["rows_per_group"]):
                    writer.write(rows_table(rows[start : start + config["rows_per_group"]], schema))
                writer.commit(counts=c)
        counts[split] = c
    return counts


def seal_tokens(plan: dict, counts: list[dict], *, store: ObjectStore | None = None) -> dict:
    """Seal the token version once every shard is tokenized (`counts`: tokenize_shard's
    results, one per plan shard). Returns {"dataset", "version", "uri", "seq_len", "tokenizer", "splits"}."""
    if len(counts) != len(plan["shards"]):
        raise ValueError(f"{len(counts)} shard results for a plan of {len(plan['shards'])} shards")
    store = store or ObjectStore()
    out = DatasetVersion(plan["out_uri"], plan["version"], store)
    totals = {s: {"docs": 0, "tokens": 0, "sequences": 0, "pad_tokens": 0} for s in SPLITS}
    for shard_counts in counts:
        for split in SPLITS:
            for key in totals[split]:
                totals[split][key] += shard_counts[split][key]
    config = plan["config"]
    if sum(t["tokens"] for t in totals.values()) == 0:
        raise StorageError(f"{plan['source']['dataset']} version {plan['source']['version']} produced no tokens (no text in {len(counts)} shard(s))")
    tok = _tokenizer(plan["tokenizer"], config["tokenizer_etag"], repr(store))
    extra = {
        "kind": "tokens",
        "seq_len": config["seq_len"],
        "val_fraction": config["val_fraction"],
        "rows_per_group": config["rows_per_group"],
        "tokenizer": plan["tokenizer"],
        "vocab_size": tok.get_vocab_size(),
        "source": plan["source"],
        "splits": totals,
    }
    out.seal(extra=extra, config_hash_=config_hash(config))
    return {"dataset": plan["out_uri"], "version": out.version, "uri": out.uri, "seq_len": config["seq_len"], "tokenizer": plan["tokenizer"], "splits": totals}


def tokenize_dataset(
    dataset_uri: str,
    version: str,
    tokenizer_uri: str,
    out_uri: str,
    seq_len: int,
    val_fraction: float = 0.01,
    *,
    store: ObjectStore | None = None,
    rows_per_group: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Turn a sealed dataset version into packed token shards under `out_uri` and seal them,
    one shard after the other (the `train` flow maps `tokenize_shard` over the shards instead).
    Idempotent: units already committed are skipped, so a re-run after a crash finishes the
    same version."""
    store = store or ObjectStore()
    plan = plan_tokenization(dataset_uri, version, tokenizer_uri, out_uri, seq_len, val_fraction, store=store, rows_per_group=rows_per_group)
    counts = []
    for i, shard in enumerate(plan["shards"]):
        counts.append(tokenize_shard(plan, shard, store=store))
        if progress:
            progress(i + 1, len(plan["shards"]))
    return seal_tokens(plan, counts, store=store)
