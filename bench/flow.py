"""Orchestration overhead of the corpus_refresh flow (benchmark, not a test).

Builds N shards of realistic size (≥ 20 MB of text each by default) by replicating the
shared web sample with perturbations, uploads them to an embedded S3 server, then refreshes
them three times side by side in this command:

  plain-2   the pipeline's stage functions in a plain loop on a 2-process pool (started with
            `spawn` by default, as Prefect's process pool is: both pay for fresh interpreters;
            `--baseline-start-method fork` lets the baseline inherit this process's imports)
  prefect-2 the corpus_refresh flow with 2 worker processes
  prefect-1 the flow with 1 worker process (for the speed-up)
  dask-2    the flow on a local Dask cluster of 2 single-threaded workers (--compare-dask)

overhead = (wall(prefect-2) − wall(plain-2)) / wall(prefect-2). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("TOKENMILL_SHARED", ROOT.parent / "shared"))


def perturbed_shards(n_shards: int, shard_mb: float, seed: int = 0):
    """Yield (name, jsonl.gz bytes): sample documents with a few words swapped per copy,
    so every copy is a distinct document of the same character as the original."""
    with gzip.open(SHARED / "corpora" / "web" / "web_sample.jsonl.gz", "rt") as fh:
        docs = [json.loads(line) for line in fh]
    rng = random.Random(seed)
    for shard in range(n_shards):
        buf, size, copy = io.BytesIO(), 0, 0
        with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1) as gz:
            while size < shard_mb * 1e6:
                for d in docs:
                    words = d["text"].split(" ")
                    for _ in range(max(1, len(words) // 50)):
                        i, j = rng.randrange(len(words)), rng.randrange(len(words))
                        words[i], words[j] = words[j], words[i]
                    text = " ".join(words)
                    gz.write((json.dumps({"id": f"s{shard}-c{copy}-{d['id']}", "text": text, "metadata": d.get("metadata")}) + "\n").encode())
                    size += len(text)
                copy += 1
        yield f"shard-{shard:03d}.jsonl.gz", buf.getvalue(), size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--shard-mb", type=float, default=20.0)
    ap.add_argument("--skip-one-worker", action="store_true")
    ap.add_argument("--compare-dask", action="store_true", help="also run the flow on a local prefect-dask cluster")
    ap.add_argument("--baseline-start-method", choices=["spawn", "fork"], default="spawn")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tokenmill-bench-flow-"))
    os.environ.update(PREFECT_HOME=str(tmp / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
                      PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180", PREFECT_LOGGING_LEVEL="WARNING")  # fmt: skip
    from pipeline.s3server import start_s3_server

    server = start_s3_server(tmp / "s3")
    os.environ.update(server.env())
    try:
        run(args, server)
    finally:
        server.stop()


def run(args, server) -> None:
    from prefect import flow

    from flows.corpus_refresh import CorpusRefreshParams, corpus_refresh
    from flows.ingest import list_sources
    from pipeline.dedup import DedupConfig
    from pipeline.process import ReadOptions
    from pipeline.refresh import DEFAULT_DEDUP, plan_refresh, run_refresh
    from pipeline.steps.chain import load_filter_config

    store = server.store()
    store.ensure_bucket("bench")
    text_mb = 0.0
    for name, blob, size in perturbed_shards(args.shards, args.shard_mb):
        store.put_bytes(f"s3://bench/raw/{name}", blob)
        text_mb += size / 1e6
    print(f"{args.shards} shards, {text_mb:.0f} MB of text", file=sys.stderr)
    sources = ["s3://bench/raw/*.jsonl.gz"]

    @flow
    def warm_up() -> None:
        """Start the local Prefect server before timing anything."""

    warm_up()
    # Build the toxicity model (and any other cached asset) once, outside the timings.
    load_filter_config(None)
    from pipeline.steps.chain import build_chain

    build_chain(load_filter_config(None))

    timings = {}
    plan = plan_refresh(list_sources(sources, store), "s3://bench/datasets/plain-2", load_filter_config(None), DedupConfig(**DEFAULT_DEDUP), read=ReadOptions(), store=store)
    start = time.perf_counter()
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(args.baseline_start_method)) as pool:
        run_refresh(plan, executor=pool)
    timings["plain-2"] = time.perf_counter() - start
    print(f"plain-2: {timings['plain-2']:.1f}s", file=sys.stderr)

    runs = [("prefect-2", "process", 2)] + ([] if args.skip_one_worker else [("prefect-1", "process", 1)]) + ([("dask-2", "dask", 2)] if args.compare_dask else [])
    for name, kind, workers in runs:
        params = CorpusRefreshParams(sources=sources, dataset=f"s3://bench/datasets/{name}", runner={"kind": kind, "workers": workers})
        start = time.perf_counter()
        corpus_refresh(params)
        timings[name] = time.perf_counter() - start
        print(f"{name}: {timings[name]:.1f}s", file=sys.stderr)

    overhead = (timings["prefect-2"] - timings["plain-2"]) / timings["prefect-2"]
    result = {
        "shards": args.shards,
        "baseline_start_method": args.baseline_start_method,
        "text_mb": round(text_mb, 1),
        "wall_s": {k: round(v, 2) for k, v in timings.items()},
        "overhead": round(overhead, 4),
        "speedup_2_workers": round(timings["prefect-1"] / timings["prefect-2"], 3) if "prefect-1" in timings else None,
        "mb_per_s_prefect_2": round(text_mb / timings["prefect-2"], 2),
        "dask_vs_process": round(timings["dask-2"] / timings["prefect-2"], 3) if "dask-2" in timings else None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
