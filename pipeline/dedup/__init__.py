"""Corpus-scale deduplication: MinHash LSH near-duplicates (datasketch-compatible signatures,
exact-Jaccard verification) and exact duplicates of the normalised text, as resumable stages
over object storage whose tasks each hold one partition (see `stages`)."""

from pipeline.dedup.config import DedupConfig, DedupError, optimal_band_params, recall_band_params
from pipeline.dedup.minhash import band_hashes, signatures, to_lean_minhash
from pipeline.dedup.representatives import REMOVALS_SCHEMA
from pipeline.dedup.shingles import normalize, shingle_hash32, shingle_hash64, shingle_hashes, shingles, words_of
from pipeline.dedup.stages import (
    DedupJob,
    StageMap,
    audit_stage,
    candidate_partitions,
    executor_map,
    filter_stage,
    plan_dedup,
    read_removals,
    run_dedup,
    run_stages,
    serial_map,
    signatures_stage,
    stage_totals,
)

__all__ = [
    "DedupConfig",
    "DedupError",
    "DedupJob",
    "REMOVALS_SCHEMA",
    "StageMap",
    "audit_stage",
    "band_hashes",
    "candidate_partitions",
    "executor_map",
    "filter_stage",
    "normalize",
    "optimal_band_params",
    "plan_dedup",
    "read_removals",
    "recall_band_params",
    "run_dedup",
    "run_stages",
    "serial_map",
    "shingle_hash32",
    "shingle_hash64",
    "shingle_hashes",
    "shingles",
    "signatures",
    "signatures_stage",
    "stage_totals",
    "to_lean_minhash",
    "words_of",
]
