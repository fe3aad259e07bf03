"""Workloads the crash-point harness runs in child processes (and the tests re-run in-process)."""

from __future__ import annotations

import pickle

import pyarrow as pa

from pipeline.dataset import DatasetVersion, ShardWriter
from pipeline.schema import DOCUMENT_SCHEMA, documents_from_pylist, quarantine_row, quarantine_table

UNITS = 3
ROWS_PER_UNIT = 600


def unit_docs(i: int) -> pa.Table:
    return documents_from_pylist([{"id": f"u{i}-{j:05d}", "text": f"unit {i} document {j} " * 30, "source": f"s3://src/{i}"} for j in range(ROWS_PER_UNIT)])


def commit_and_seal(argv: list) -> None:
    """Three units of two or more shards each (one with a quarantine table), then the seal."""
    dataset, version_id = argv
    version = DatasetVersion(dataset, version_id)
    for i in range(UNITS):
        with ShardWriter(version, f"unit-{i}", schema=DOCUMENT_SCHEMA, target_bytes=2_000) as writer:
            for batch in unit_docs(i).to_batches(max_chunksize=ROWS_PER_UNIT // 3):
                writer.write(batch)
            bad = quarantine_table([quarantine_row(f"s3://src/{i}", 7, "bad_json", "not JSON", raw=b"{nope")]) if i == 1 else None
            writer.commit(counts={"docs": ROWS_PER_UNIT}, quarantine=bad)
    version.seal(extra={"workload": "commit_and_seal"})


def refresh_seal(argv: list) -> None:
    """The seal and post-seal steps of a refresh whose stages ran already (plan and stage
    results pickled by the test)."""
    from pipeline import refresh

    from dataclasses import replace

    from pipeline.fingerprint import code_fingerprint

    with open(argv[0], "rb") as fh:
        plan, filter_results, dedup_counts = pickle.load(fh)
    # The harness tests crash convergence, not the code check: in a working tree that others
    # edit, this process may hash other sources than the test process that planned.
    plan = replace(plan, code=code_fingerprint())
    refresh.finish(plan, refresh.seal(plan, filter_results, dedup_counts))
