"""Corpus-scale deduplication: MinHash LSH near-duplicates (datasketch-compatible signatures)
and exact duplicates of the normalised text, as resumable stages over object storage."""

from pipeline.dedup.config import DedupConfig, DedupError, optimal_band_params
from pipeline.dedup.minhash import band_hashes, signatures, to_lean_minhash
from pipeline.dedup.shingles import normalize, shingle_hash32, shingle_hash64, shingle_hashes, shingles, words_of
from pipeline.dedup.stages import (
    REMOVALS_SCHEMA,
    audit_stage,
    candidate_partitions,
    candidates_stage,
    clusters_stage,
    filter_stage,
    plan_dedup,
    run_dedup,
    signatures_stage,
)

__all__ = [
    "DedupConfig",
    "DedupError",
    "REMOVALS_SCHEMA",
    "audit_stage",
    "band_hashes",
    "candidate_partitions",
    "candidates_stage",
    "clusters_stage",
    "filter_stage",
    "normalize",
    "optimal_band_params",
    "plan_dedup",
    "run_dedup",
    "shingle_hash32",
    "shingle_hash64",
    "shingle_hashes",
    "shingles",
    "signatures",
    "signatures_stage",
    "to_lean_minhash",
    "words_of",
]
