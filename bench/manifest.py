"""Manifest cost against dataset size (issue 11.3). Not a test.

Commits N units (default 10,000) to one dataset version on the embedded S3 server, one
commit at a time as tasks do, timing each commit; then seals. A commit must cost the same
at unit 10,000 as at unit 10 (target: `commit_ms_at_10000` <= 2 x `commit_ms_at_10`) and the
metadata left per unit must stay small (target <= 4 KB).

Each unit carries a shard entry and counts shaped like a real refresh unit's (reader stats,
eight filter steps), so record sizes are realistic. Shard objects themselves are not
uploaded: their bytes are data, not metadata, and would only slow the run.

    .venv/bin/python bench/manifest.py [--units 10000]

Last line: JSON with commit_ms_at_10 and commit_ms_at_10000 (median wall ms of the 10
commits around each point; the matching CPU ms of this process beside them),
metadata_bytes_per_unit (every non-data object of the version, its marker and the latest
pointer, after the seal, per unit), peak_metadata_bytes_per_unit (before the seal: commit
records), seal_s and the ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.dataset import DatasetVersion, ShardEntry, latest_version  # noqa: E402
from pipeline.s3server import start_s3_server  # noqa: E402
from pipeline.storage import join  # noqa: E402

STEPS = ["langid", "gopher_repetition", "gopher_quality", "c4", "fineweb", "toxicity", "blocklist", "pii"]


def unit_counts(i: int) -> dict:
    return {
        "source": f"s3://crawl/raw/CC-MAIN-2024-10/segments/{i:06d}/warc/CC-MAIN-{i:06d}.warc.gz",
        "source_bytes": 1_073_741_824,
        "reader": {"documents": 41_000, "records": 123_000, "bytes_read": 1_073_741_824, "quarantined": {"truncated_gzip": 1}, "skipped": {"non_html": 80_000}},
        "steps": [{"name": s, "docs_in": 41_000, "bytes_in": 180_000_000, "kept": 30_000, "dropped": {"reason_a": 6_000, "reason_b": 5_000}, "seconds": 12.5, "counters": {}} for s in STEPS],
        "documents_out": 30_000,
        "quarantined": 1,
        "seconds": 96.2,
    }


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def metadata_bytes(version: DatasetVersion) -> int:
    store = version.store
    objects = [o for o in store.list(version.uri + "/") if "/data/" not in o.uri]
    objects += [o for o in (store.head(version.marker_uri), store.head(join(version.dataset_uri, "_latest.json"))) if o is not None]
    return sum(o.size for o in objects)


def around(values: list[float], index: int, width: int = 10) -> float:
    lo = max(0, min(len(values) - width, index - width // 2))
    return statistics.median(values[lo : lo + width])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--units", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-manifest-", dir="/tmp") as tmp:
        server = start_s3_server(Path(tmp) / "s3")
        try:
            store = server.store()
            store.ensure_bucket("bench")
            version = DatasetVersion("s3://bench/datasets/web", "0123456789abcdef", store)
            wall_ms, cpu_ms = [], []
            for i in range(args.units):
                unit = f"CC-MAIN-{i:06d}.warc.gz-{i:08x}"
                shard = ShardEntry(f"{unit}-00000-1a2b3c4d.parquet", join(version.uri, "data", f"{unit}-00000-1a2b3c4d.parquet"), 30_000, 134_217_728, f"{i:064x}", unit)
                w0, c0 = time.perf_counter(), cpu_s()
                version.commit_unit(unit, [shard], counts=unit_counts(i), quarantine={"uri": join(version.uri, "quarantine", f"{unit}-1a2b3c4d.parquet"), "rows": 1, "reasons": {"truncated_gzip": 1}})
                wall_ms.append((time.perf_counter() - w0) * 1000)
                cpu_ms.append((cpu_s() - c0) * 1000)
                if (i + 1) % 1000 == 0:
                    print(f"{i + 1} units committed, last 10 commits median {statistics.median(wall_ms[-10:]):.1f} ms", file=sys.stderr)
            peak = metadata_bytes(version)
            w0 = time.perf_counter()
            manifest = version.seal(extra={"bench": True})
            seal_s = time.perf_counter() - w0
            assert len(manifest.units) == args.units and latest_version(version.dataset_uri, store).version == version.version
            after = metadata_bytes(version)
        finally:
            server.stop()
    at_10, at_n = around(wall_ms, 9), around(wall_ms, args.units - 1)
    result = {
        "units": args.units,
        "commit_ms_at_10": round(at_10, 2),
        f"commit_ms_at_{args.units}": round(at_n, 2),
        "commit_ratio": round(at_n / at_10, 3),
        "commit_cpu_ms_at_10": round(around(cpu_ms, 9), 3),
        f"commit_cpu_ms_at_{args.units}": round(around(cpu_ms, args.units - 1), 3),
        "metadata_bytes_per_unit": round(after / args.units),
        "peak_metadata_bytes_per_unit": round(peak / args.units),
        "seal_s": round(seal_s, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
