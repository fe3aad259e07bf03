"""Streaming token shards from object storage into training batches.

The unit of per-rank sharding is a Parquet row group of a token shard (see
`pipeline.tokenize`). Each epoch, all training row groups are permuted with a seeded RNG and
dealt round-robin to the ranks; a rank reads only its own row groups, one ahead in a
background thread so that storage latency hides behind compute. Rows inside a group are
permuted too. The position (epoch, group, row) is the whole state: save it with
`state_dict()` and `load_state_dict()` continues with the very next sequence.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from pipeline.dataset import DatasetVersion, latest_version
from pipeline.storage import ObjectStore, StorageError
from pipeline.tokenize import TOKENS_COLUMN


@dataclass(frozen=True)
class RowGroup:
    uri: str
    index: int
    rows: int


class TokenDataset:
    """A sealed token dataset version: its sequence length, tokenizer and row groups per split."""

    def __init__(self, dataset_uri: str, version: str = "latest", store: ObjectStore | None = None):
        self.store = store or ObjectStore()
        self.version = latest_version(dataset_uri, self.store) if version == "latest" else DatasetVersion(dataset_uri, version, self.store)
        manifest = self.version.manifest()
        if not manifest.sealed or manifest.extra.get("kind") != "tokens":
            raise StorageError(f"{self.version.uri} is not a sealed token dataset (run `tokenmill tokenize` first)")
        self.manifest = manifest
        self.seq_len: int = manifest.extra["seq_len"]
        self.tokenizer_uri: str = manifest.extra["tokenizer"]
        self.vocab_size: int = manifest.extra["vocab_size"]

    def row_groups(self, split: str) -> list[RowGroup]:
        """Row groups of one split in manifest order (reads each shard's Parquet footer)."""
        out = []
        for shard in self.manifest.shards:
            if not shard["unit"].startswith(f"{split}."):
                continue
            with self.store.open_random_access(shard["uri"]) as fh:
                meta = pq.ParquetFile(fh).metadata
            out.extend(RowGroup(shard["uri"], i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups))
        return out


class RowGroupReader:
    """Reads row groups as (rows, seq_len + 1) int32 arrays; keeps Parquet footers of open shards."""

    def __init__(self, store: ObjectStore, width: int):
        self.store = store
        self.width = width
        self._files: dict[str, pq.ParquetFile] = {}

    def read(self, group: RowGroup) -> np.ndarray:
        pf = self._files.get(group.uri)
        if pf is None:
            pf = self._files[group.uri] = pq.ParquetFile(self.store.open_random_access(group.uri))
        column = pf.read_row_group(group.index, columns=[TOKENS_COLUMN]).column(0).combine_chunks()
        rows = column.flatten().to_numpy().reshape(-1, self.width)
        if len(rows) != group.rows:
            raise StorageError(f"{group.uri} row group {group.index}: expected {group.rows} rows, read {len(rows)}")
        return rows


class ShardedTokenStream:
    """This rank's endless, deterministic stream of sequences (rows of seq_len + 1 tokens)."""

    def __init__(self, store: ObjectStore, groups: list[RowGroup], width: int, *, rank: int, world: int, seed: int):
        if len(groups) < world:
            raise ValueError(f"the token dataset has {len(groups)} training row groups but there are {world} ranks; re-tokenize with a smaller rows_per_group")
        self.groups, self.rank, self.world, self.seed = groups, rank, world, seed
        self.reader = RowGroupReader(store, width)
        self.epoch, self.group_pos, self.row_pos = 0, 0, 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="token-prefetch")
        self._pending: dict[tuple[int, int], Future] = {}
        self._current: tuple[tuple[int, int], np.ndarray] | None = None
        self._plans: dict[int, list[int]] = {}

    def _plan(self, epoch: int) -> list[int]:
        """Indices of this rank's row groups for an epoch, in reading order."""
        if epoch not in self._plans:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.groups))
            self._plans = {epoch: [int(i) for i in order[self.rank :: self.world]]}
        return self._plans[epoch]

    def _next_key(self, key: tuple[int, int]) -> tuple[int, int]:
        epoch, pos = key
        return (epoch, pos + 1) if pos + 1 < len(self._plan(epoch)) else (epoch + 1, 0)

    def _load(self, key: tuple[int, int]) -> np.ndarray:
        epoch, pos = key
        index = self._plan(epoch)[pos]
        rows = self.reader.read(self.groups[index])
        return rows[np.random.default_rng([self.seed, epoch, index]).permutation(len(rows))]

    def _fetch(self, key: tuple[int, int]) -> Future:
        if key not in self._pending:
            self._pending[key] = self._pool.submit(self._load, key)
        return self._pending[key]

    def _group(self) -> np.ndarray:
        key = (self.epoch, self.group_pos)
        if self._current is None or self._current[0] != key:
            rows = self._fetch(key).result()
            self._pending.pop(key, None)
            self._current = (key, rows)
            self._fetch(self._next_key(key))  # read ahead while this group is trained on
        return self._current[1]

    def next_batch(self, batch_size: int) -> np.ndarray:
        parts, need = [], batch_size
        while need:
            rows = self._group()
            take = rows[self.row_pos : self.row_pos + need]
            parts.append(take)
            need -= len(take)
            self.row_pos += len(take)
            if self.row_pos >= len(rows):
                self.epoch, self.group_pos = self._next_key((self.epoch, self.group_pos))
                self.row_pos = 0
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "group_pos": self.group_pos, "row_pos": self.row_pos, "rank": self.rank, "world": self.world, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if (state["rank"], state["world"], state["seed"]) != (self.rank, self.world, self.seed):
            raise ValueError(f"data position was saved by rank {state['rank']} of {state['world']} (seed {state['seed']}); this is rank {self.rank} of {self.world} (seed {self.seed})")
        self.epoch, self.group_pos, self.row_pos = state["epoch"], state["group_pos"], state["row_pos"]
        self._current = None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def validation_rows(store: ObjectStore, groups: list[RowGroup], width: int, *, rank: int, world: int, count: int) -> np.ndarray | None:
    """The same `count` validation sequences for this rank at every evaluation: rows
    rank, rank + world, ... of the validation split, cycled if the split is short. None when
    the split is empty. Every rank gets the same count, so ZeRO-3's collectives line up."""
    reader = RowGroupReader(store, width)
    parts, have = [], 0
    for group in groups:
        if have >= count * world:
            break
        parts.append(reader.read(group))
        have += len(parts[-1])
    if not have:
        return None
    rows = np.concatenate(parts)
    mine = rows[rank::world] if len(rows) >= world else rows
    return np.resize(mine, (count, width)) if len(mine) != count else mine
