"""Dedup configuration and the LSH band/row choice."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Literal

from datasketch.lsh import _optimal_param

from pipeline.dataset import config_hash

# With exact-Jaccard verification a false candidate costs only a comparison, so the bands are
# chosen for recall: at least this chance that a pair exactly at the threshold shares a bucket.
VERIFIED_RECALL_AT_THRESHOLD = 0.99
# Explicit bands x rows that compare fewer than this share of the pairs at the threshold are
# a mistake (e.g. bands tuned for 0.8 kept for a threshold of 0.5), not a choice.
MIN_RECALL_AT_THRESHOLD = 0.25


class DedupError(RuntimeError):
    """A dedup stage cannot run (missing earlier stage, inconsistent work folder, bad config)."""


@dataclass(frozen=True)
class DedupConfig:
    """What to deduplicate and how.

    `bands`/`rows` default from `threshold`: with `verify_jaccard`, the steepest banding that
    still puts 99 % of the pairs at the threshold into a common bucket (20 x 6 at 0.8 and 120
    permutations); without, datasketch's optimal choice for the false-positive/negative weights
    (what `MinHashLSH(threshold, num_perm)` uses). Explicit bands/rows are checked against the
    threshold.

    Scale: `partition_docs` corpus documents per partition sets how many partitions
    verification and the connected components use, `bucket_docs` how many hash ranges each
    band and the exact hashes are split into (a bucket row is 24 bytes, a compared text tens of
    kilobytes: bucket partitions hold far more documents); `partitions`/`hash_ranges`
    override. So no task's memory grows with the corpus. `bucket_pivots` bounds the
    comparisons inside one bucket (see `candidates`).

    Representative of a cluster (the copy kept): most words, then the highest
    `quality_column` value (if that column exists; missing values last), then the earliest
    `crawl_timestamp` (missing last), then the smallest id.
    """

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
    verify_jaccard: bool = False  # keep only LSH candidate pairs whose exact shingle Jaccard >= threshold
    partition_docs: int = 200_000
    bucket_docs: int = 10_000_000
    hash_ranges: int | None = None
    partitions: int | None = None
    bucket_pivots: int = 32
    quality_column: str | None = None

    def __post_init__(self) -> None:
        if not (self.minhash or self.exact):
            raise DedupError("nothing to do: enable minhash and/or exact dedup")
        if self.num_perm < 2 or self.ngram < 1:
            raise DedupError("num_perm must be >= 2 and ngram >= 1")
        if min(self.partition_docs, self.bucket_docs, self.bucket_pivots, self.hash_ranges or 1, self.partitions or 1) < 1:
            raise DedupError("partition_docs, bucket_docs, bucket_pivots, hash_ranges and partitions must be >= 1")
        if not 0.0 < self.threshold <= 1.0:
            raise DedupError(f"threshold must be in (0, 1], got {self.threshold}")
        if (self.bands is None) != (self.rows is None):
            raise DedupError("give both bands and rows, or neither")
        if self.bands is not None and (self.bands < 1 or self.rows < 1 or self.bands * self.rows > self.num_perm):
            raise DedupError(f"bands x rows ({self.bands} x {self.rows}) must be positive and <= num_perm ({self.num_perm})")
        if self.bands is not None and self.minhash:
            recall = candidate_probability(self.threshold, self.bands, self.rows)
            if recall < MIN_RECALL_AT_THRESHOLD:
                raise DedupError(
                    f"{self.bands} bands x {self.rows} rows put only {recall:.0%} of the pairs at Jaccard {self.threshold} "
                    "into a common bucket; leave bands/rows out to derive them from the threshold"
                )
        if self.scheme not in ("affine32", "legacy"):
            raise DedupError(f"unknown MinHash scheme {self.scheme!r}")

    @property
    def band_params(self) -> tuple[int, int]:
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        if self.verify_jaccard:
            return recall_band_params(self.threshold, self.num_perm)
        return optimal_band_params(self.threshold, self.num_perm, self.false_positive_weight, self.false_negative_weight)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def hash(self) -> str:
        return config_hash(self.as_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "DedupConfig":
        return cls(**d)


def candidate_probability(jaccard: float, bands: int, rows: int) -> float:
    """Chance that two documents at this Jaccard similarity share at least one band."""
    return 1.0 - (1.0 - jaccard**rows) ** bands


@functools.lru_cache(maxsize=64)
def optimal_band_params(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) minimising the weighted false positive/negative probability: datasketch's
    own routine, so an index built here matches `MinHashLSH(threshold, num_perm, weights)`."""
    return tuple(_optimal_param(threshold, num_perm, fp_weight, fn_weight))


@functools.lru_cache(maxsize=64)
def recall_band_params(threshold: float, num_perm: int, recall: float = VERIFIED_RECALL_AT_THRESHOLD) -> tuple[int, int]:
    """The most rows per band (fewest false candidates) whose `num_perm // rows` bands still
    give a pair at exactly `threshold` a `recall` chance of sharing a bucket."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if candidate_probability(threshold, bands, rows) >= recall:
            return bands, rows
    return num_perm, 1
