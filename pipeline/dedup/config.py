"""Dedup configuration and the LSH band/row choice."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Literal

from datasketch.lsh import _optimal_param

from pipeline.dataset import config_hash


class DedupError(RuntimeError):
    """A dedup stage cannot run (missing earlier stage, inconsistent work folder, bad config)."""


@dataclass(frozen=True)
class DedupConfig:
    """What to deduplicate and how. `bands`/`rows` default to datasketch's optimal choice for
    `threshold` and the false-positive/negative weights (FineWeb uses 14 bands x 8 rows)."""

    num_perm: int = 128
    ngram: int = 5
    seed: int = 1
    threshold: float = 0.8
    bands: int | None = None
    rows: int | None = None
    false_positive_weight: float = 0.5
    false_negative_weight: float = 0.5
    scheme: Literal["affine32", "legacy"] = "affine32"  # datasketch 2.0's default is affine32
    minhash: bool = True
    exact: bool = True
    verify_jaccard: bool = False  # drop LSH candidate pairs whose exact shingle Jaccard < threshold
    hash_ranges: int = 1  # split each band (and the exact hashes) into this many candidate partitions

    def __post_init__(self) -> None:
        if not (self.minhash or self.exact):
            raise DedupError("nothing to do: enable minhash and/or exact dedup")
        if self.num_perm < 2 or self.ngram < 1 or self.hash_ranges < 1:
            raise DedupError("num_perm must be >= 2, ngram >= 1, hash_ranges >= 1")
        if not 0.0 < self.threshold <= 1.0:
            raise DedupError(f"threshold must be in (0, 1], got {self.threshold}")
        if (self.bands is None) != (self.rows is None):
            raise DedupError("give both bands and rows, or neither")
        if self.bands is not None and (self.bands < 1 or self.rows < 1 or self.bands * self.rows > self.num_perm):
            raise DedupError(f"bands x rows ({self.bands} x {self.rows}) must be positive and <= num_perm ({self.num_perm})")
        if self.scheme not in ("affine32", "legacy"):
            raise DedupError(f"unknown MinHash scheme {self.scheme!r}")

    @property
    def band_params(self) -> tuple[int, int]:
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return optimal_band_params(self.threshold, self.num_perm, self.false_positive_weight, self.false_negative_weight)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def hash(self) -> str:
        return config_hash(self.as_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "DedupConfig":
        return cls(**d)


@functools.lru_cache(maxsize=64)
def optimal_band_params(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false positive/negative probability: datasketch's
    own routine, so an index built here matches `MinHashLSH(threshold, num_perm, weights)`."""
    return tuple(_optimal_param(threshold, num_perm, fp_weight, fn_weight))
