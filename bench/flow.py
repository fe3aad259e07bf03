"""Orchestration overhead of the corpus_refresh flow (benchmark, not a test).

Builds N shards of realistic size (≥ 20 MB of text each by default) by replicating the
shared web sample with perturbations, uploads them to an embedded S3 server, then refreshes
them side by side in this command:

  plain-2   the pipeline's stage functions in a plain loop on a 2-process pool (started with
            `spawn` by default, as Prefect's process pool is: both pay for fresh interpreters;
            `--baseline-start-method fork` lets the baseline inherit this process's imports),
            then the dataset card, as the flow writes it
  prefect-2 the corpus_refresh flow with 2 worker processes
  prefect-1 the flow with 1 worker process (for the speed-up)
  dask-2    the flow on a local Dask cluster of 2 single-threaded workers (--compare-dask)

Cost is CPU-seconds, as in the other benches (wall time on a shared 2-core machine measures the
neighbours): the CPU time of this process and of every process it started, running or exited —
the worker processes, the Prefect server this run talks to (ephemeral: a child process) and the
S3 server — taken before and after each run. A process reaped by its parent is counted in the
parent's `children_*` times, so nothing that ran is missed.

overhead = (cpu(prefect-2) − cpu(plain-2)) / cpu(prefect-2), with `cpu_by_process` saying where
the difference goes (this process = the flow engine; workers; Prefect server; S3 server).
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
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
                    if size >= shard_mb * 1e6:
                        break
                    words = d["text"].split(" ")
                    for _ in range(max(1, len(words) // 50)):
                        i, j = rng.randrange(len(words)), rng.randrange(len(words))
                        words[i], words[j] = words[j], words[i]
                    text = " ".join(words)
                    gz.write((json.dumps({"id": f"s{shard}-c{copy}-{d['id']}", "text": text, "metadata": d.get("metadata")}) + "\n").encode())
                    size += len(text)
                copy += 1
        yield f"shard-{shard:03d}.jsonl.gz", buf.getvalue(), size


def _role(proc) -> str:
    cmd = " ".join(proc.cmdline()[:6])
    if "weed" in cmd or "minio" in cmd:
        return "s3 server"
    if "uvicorn" in cmd or "prefect.server" in cmd or "server start" in cmd:
        return "prefect server"
    return "workers (running)"


def cpu_snapshot() -> Counter:
    """CPU-seconds so far of this process and everything it started, by role."""
    import psutil

    me = psutil.Process()
    t = me.cpu_times()
    snap = Counter({"this process": t.user + t.system, "workers (exited)": t.children_user + t.children_system})
    for child in me.children(recursive=True):
        try:
            c = child.cpu_times()
            snap[_role(child)] += c.user + c.system + c.children_user + c.children_system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return snap


class Measure:
    """Wall and CPU seconds of a block, CPU split by role."""

    def __enter__(self):
        self.cpu0, self.wall0 = cpu_snapshot(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall0
        after = cpu_snapshot()
        by_role = {k: after.get(k, 0.0) - self.cpu0.get(k, 0.0) for k in set(after) | set(self.cpu0)}
        # a worker alive at the start and reaped since moves from "running" to "exited": merge
        workers = by_role.pop("workers (running)", 0.0) + by_role.pop("workers (exited)", 0.0)
        self.by_role = {**{k: round(v, 2) for k, v in sorted(by_role.items())}, "workers": round(workers, 2)}
        self.cpu = sum(by_role.values()) + workers
        return False


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
        shutil.rmtree(tmp, ignore_errors=True)


def report(name: str, m: Measure) -> None:
    print(f"{name}: {m.cpu:.1f} CPU-s, {m.wall:.1f}s wall  {m.by_role}", file=sys.stderr)


def run(args, server) -> None:
    from prefect import flow

    from flows.corpus_refresh import CorpusRefreshParams, corpus_refresh
    from flows.ingest import list_sources
    from pipeline.card import build_card, write_card
    from pipeline.dataset import DatasetVersion
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

    measured: dict[str, Measure] = {}
    plan = plan_refresh(list_sources(sources, store), "s3://bench/datasets/plain-2", load_filter_config(None), DedupConfig(**DEFAULT_DEDUP), read=ReadOptions(), store=store)
    with Measure() as measured["plain-2"]:
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(args.baseline_start_method)) as pool:
            manifest = run_refresh(plan, executor=pool)
        # the same outputs as the flow: the dataset card beside the manifest
        version_uri = DatasetVersion(plan.dataset_uri, manifest.version, store).uri
        write_card(version_uri, build_card(version_uri, manifest.extra["refresh"]), store)
    report("plain-2", measured["plain-2"])

    runs = [("prefect-2", "process", 2)] + ([] if args.skip_one_worker else [("prefect-1", "process", 1)]) + ([("dask-2", "dask", 2)] if args.compare_dask else [])
    for name, kind, workers in runs:
        params = CorpusRefreshParams(sources=sources, dataset=f"s3://bench/datasets/{name}", runner={"kind": kind, "workers": workers})
        with Measure() as measured[name]:
            corpus_refresh(params)
        report(name, measured[name])

    cpu = {k: m.cpu for k, m in measured.items()}
    wall = {k: m.wall for k, m in measured.items()}
    result = {
        "shards": args.shards,
        "baseline_start_method": args.baseline_start_method,
        "text_mb": round(text_mb, 1),
        "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        "cpu_by_process": {k: m.by_role for k, m in measured.items()},
        "wall_s": {k: round(v, 2) for k, v in wall.items()},
        "overhead": round((cpu["prefect-2"] - cpu["plain-2"]) / cpu["prefect-2"], 4),
        "overhead_wall": round((wall["prefect-2"] - wall["plain-2"]) / wall["prefect-2"], 4),
        "speedup_2_workers": round(wall["prefect-1"] / wall["prefect-2"], 3) if "prefect-1" in wall else None,
        "cpu_s_per_text_mb_prefect_2": round(cpu["prefect-2"] / text_mb, 3),
        "dask_vs_process_cpu": round(cpu["dask-2"] / cpu["prefect-2"], 3) if "dask-2" in cpu else None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
