"""Streaming token shards from object storage into training batches.

Each epoch puts every training sequence in one seeded order: the row groups of the token
shards (see `pipeline.tokenize`) in a random order, the rows inside each group permuted, all
concatenated. Rank r of W takes the contiguous slice [r·R/W, (r+1)·R/W) of that order (R rows
in all): the slices differ by at most one row, so every rank sees 1/W of the data, the ranks
together see every sequence exactly once per epoch, and they start the next epoch within the
same step. Row groups have very different sizes (the last group of each shard is short), so
dealing whole groups to ranks would not do this. A rank reads only the groups its slice
overlaps, one ahead in a background thread so that storage latency hides behind compute.
The position (epoch, rows taken from this epoch's slice) is the whole state: save it with
`state_dict()`, and `load_state_dict()` continues with the very next sequence; `skip(n)` jumps
over sequences without reading them.
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
        self.groups, self.rank, self.world, self.seed = groups, rank, world, seed
        self.sizes = np.array([g.rows for g in groups], dtype=np.int64)
        self.total = int(self.sizes.sum())
        if self.total < world:
            raise ValueError(f"the token dataset has {self.total} training sequences but there are {world} ranks; use fewer ranks or more data")
        # This rank's slice of every epoch's order (the same bounds each epoch).
        self.lo, self.hi = rank * self.total // world, (rank + 1) * self.total // world
        self.reader = RowGroupReader(store, width)
        self.epoch, self.offset = 0, 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="token-prefetch")
        self._pending: dict[tuple[int, int], Future] = {}
        self._current: tuple[tuple[int, int], np.ndarray] | None = None
        self._layouts: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def rows_per_epoch(self) -> int:
        """Sequences this rank takes per epoch."""
        return self.hi - self.lo

    def _layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(group index per slot, first epoch position of each slot + the end) for an epoch."""
        if epoch not in self._layouts:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.groups))
            starts = np.concatenate([[0], np.cumsum(self.sizes[order])])
            self._layouts = {e: v for e, v in self._layouts.items() if e >= epoch - 1}  # current and next only
            self._layouts[epoch] = (order, starts)
        return self._layouts[epoch]

    def _slot(self, epoch: int, position: int) -> int:
        return int(np.searchsorted(self._layout(epoch)[1], position, side="right")) - 1

    def _load(self, epoch: int, index: int) -> np.ndarray:
        """Runs in the prefetch thread: touches only its arguments and the reader."""
        rows = self.reader.read(self.groups[index])
        return rows[np.random.default_rng([self.seed, epoch, index]).permutation(len(rows))]

    def _fetch(self, key: tuple[int, int]) -> Future:
        if key not in self._pending:
            epoch, slot = key
            self._pending[key] = self._pool.submit(self._load, epoch, int(self._layout(epoch)[0][slot]))
        return self._pending[key]

    def _group(self, key: tuple[int, int]) -> np.ndarray:
        if self._current is None or self._current[0] != key:
            rows = self._fetch(key).result()
            self._pending.pop(key, None)
            self._current = (key, rows)
            epoch, slot = key
            last = self._slot(epoch, self.hi - 1)
            self._fetch((epoch, slot + 1) if slot < last else (epoch + 1, self._slot(epoch + 1, self.lo)))  # read ahead
        return self._current[1]

    def next_batch(self, batch_size: int) -> np.ndarray:
        parts, need = [], batch_size
        while need:
            position = self.lo + self.offset
            slot = self._slot(self.epoch, position)
            start, end = self._layout(self.epoch)[1][slot : slot + 2]
            rows = self._group((self.epoch, slot))
            take = rows[position - start : min(end, self.hi) - start][:need]
            parts.append(take)
            need -= len(take)
            self._advance(len(take))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _advance(self, n: int) -> None:
        self.offset += n
        if self.offset >= self.rows_per_epoch:
            self.epoch, self.offset = self.epoch + 1, 0

    def skip(self, n: int) -> None:
        """Jump over the next `n` sequences without reading them (skipping a data window)."""
        epochs, self.offset = divmod(self.offset + n, self.rows_per_epoch)
        self.epoch += epochs
        self._current = None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "rank": self.rank, "world": self.world, "seed": self.seed, "rows": self.total}

    def load_state_dict(self, state: dict) -> None:
        if "offset" not in state:
            raise ValueError("the data position was saved by an older tokenmill (row-group sharding); start a new run")
        saved = (state["rank"], state["world"], state["seed"], state["rows"])
        if saved != (self.rank, self.world, self.seed, self.total):
            raise ValueError(
                f"data position was saved by rank {saved[0]} of {saved[1]} (seed {saved[2]}, {saved[3]} sequences); "
                f"this is rank {self.rank} of {self.world} (seed {self.seed}, {self.total} sequences)"
            )
        self.epoch, self.offset = state["epoch"], state["offset"]
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
