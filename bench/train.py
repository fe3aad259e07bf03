"""Training throughput: the full DeepSpeed loop (token shards streamed from the embedded S3
server, metrics, heartbeats) with ZeRO-1/2/3 on 2 CPU ranks, against a plain torch DDP loop
over the same model and the same tokens held in memory. With a GPU, also tokens/s and MFU
of the 125m and 350m presets in bf16 on one GPU.

Measure: tokens per CPU-second (user + system of all ranks, from getrusage of children), not
wall time, because the machine is shared. Each configuration runs twice, with SHORT and LONG
steps; the difference cancels start-up (imports, process groups, DeepSpeed init, final
checkpoint), leaving the steady-state cost of a training step.

    TOKENMILL_SHARED=/work/shared python bench/train.py [--docs 300 --seq-len 128 ...]

The last line printed is one JSON object with `tokens_per_s`, `ratio_vs_ddp`,
`startup_cpu_s` (CPU-seconds of a launch besides its steps: torchrun, imports, process groups,
engine, data, final checkpoint; all ranks together) and `tokenize` (the `train` flow's
tokenization: shard by shard in one thread, against the flow's mapped tasks, `--tokenize-workers`
shards at a time; tokens per CPU-second of this process and the wall-time speed-up).
`--configs zero2` measures one configuration only (no DDP ratio then); `--baseline-repo DIR`
adds `zero2@baseline`, the same launches of another checkout's trainer (e.g. `git archive HEAD`),
interleaved with this one's, for before/after figures of the start-up cost.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("TOKENMILL_SHARED", REPO.parent / "shared"))
TARGET_RATIO = 0.8


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_cpu_seconds(cmd: list[str], env: dict, cwd: Path = REPO) -> tuple[float, str]:
    before = children_cpu()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench launch failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-4000:]}")
    return children_cpu() - before, proc.stdout


# -- the DDP baseline (runs as a torchrun worker: `bench/train.py --ddp-worker ...`) ---------------


def ddp_worker(args) -> None:
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from model.data import TokenDataset, RowGroupReader
    from model.llama import Llama, lm_loss
    from model.presets import model_config
    from model.train import lr_lambda, param_groups

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    tokens = TokenDataset(args.tokens, args.version)
    reader = RowGroupReader(tokens.store, tokens.seq_len + 1)
    need = args.steps * args.micro_batch * world
    groups, rows = tokens.row_groups("train"), []
    while sum(map(len, rows)) < need:  # in memory before the loop starts
        rows.append(reader.read(groups[len(rows) % len(groups)]))
    data = torch.from_numpy(np.concatenate(rows)[:need]).long()
    torch.manual_seed(1234)
    model = Llama(model_config("tiny", vocab_size=-(-tokens.vocab_size // 64) * 64))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(4, args.steps, 0.1))
    for step in range(args.steps):
        batch = data[(step * world + rank) * args.micro_batch : (step * world + rank + 1) * args.micro_batch]
        loss = lm_loss(ddp(batch[:, :-1]), batch[:, 1:], 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if not math.isfinite(loss.item()):
            raise SystemExit("DDP baseline diverged")
    dist.destroy_process_group()


# -- setup: data on the embedded S3 server ---------------------------------------------------------


def prepare_tokens(store, docs: int, seq_len: int, vocab: int) -> dict:
    from model.tokenizer import train_tokenizer
    from pipeline.dataset import DatasetVersion, write_sealed
    from pipeline.schema import documents_from_pylist
    from pipeline.tokenize import tokenize_dataset

    rows = read_web_docs(docs)
    store.ensure_bucket("bench")
    version = DatasetVersion("s3://bench/docs", "v1", store)
    write_sealed(version, documents_from_pylist(rows), max(1, len(rows) // 4))
    tok = train_tokenizer("s3://bench/docs", "v1", "s3://bench/tokenizer/", vocab, store=store)
    return tokenize_dataset("s3://bench/docs", "v1", tok, "s3://bench/tokens", seq_len, val_fraction=0.01, store=store, rows_per_group=256)


def read_web_docs(limit: int) -> list[dict]:
    rows = []
    with gzip.open(SHARED / "corpora/web/web_sample.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            rows.append({"id": doc["id"], "text": doc["text"], "source": "web_sample"})
            if len(rows) == limit:
                break
    return rows


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process (the S3 server is another process)
    return r.ru_utime + r.ru_stime


def tokenize_figures(store, tokenizer_uri: str, docs: int, shards: int, workers: int, seq_len: int) -> dict:
    """Tokenize one dataset version twice into fresh token versions: shard after shard in one
    thread (what `tokenize_dataset` and the flow used to do), then as the flow does now, each
    shard its own task, `workers` at a time on a thread pool (the Rust encoder and the Parquet
    I/O release the GIL). Same plan, same tokenizer (loaded once before both)."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.dataset import DatasetVersion, write_sealed
    from pipeline.schema import documents_from_pylist
    from pipeline.tokenize import _tokenizer, plan_tokenization, tokenize_shard

    rows = read_web_docs(docs)
    write_sealed(DatasetVersion("s3://bench/tokdocs", "v1", store), documents_from_pylist(rows), -(-len(rows) // shards))
    out = {}
    for mode, threads in (("serial", 1), ("mapped", workers)):
        plan = plan_tokenization("s3://bench/tokdocs", "v1", tokenizer_uri, f"s3://bench/tok-{mode}", seq_len, 0.01, store=store)
        _tokenizer(plan["tokenizer"], plan["config"]["tokenizer_etag"], repr(store))
        cpu0, wall0 = self_cpu(), time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            counts = list(pool.map(lambda shard: tokenize_shard(plan, shard, store=store), plan["shards"]))
        cpu, wall = self_cpu() - cpu0, time.perf_counter() - wall0
        tokens = sum(c[split]["tokens"] for c in counts for split in c)
        out[mode] = {"threads": threads, "tokens": tokens, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
                     "tokens_per_cpu_s": round(tokens / cpu), "tokens_per_wall_s": round(tokens / wall)}  # fmt: skip
        print(f"tokenize {mode} ({threads} thread(s), {len(plan['shards'])} shards): {tokens} tokens, {cpu:.1f} CPU-s, {wall:.1f} s wall", flush=True)
    out["wall_speedup"] = round(out["serial"]["wall_s"] / out["mapped"]["wall_s"], 2)
    out["cpu_ratio"] = round(out["mapped"]["cpu_s"] / out["serial"]["cpu_s"], 2)
    return out


def write_config(tmp: Path, name: str, tokens: dict, *, steps: int, micro_batch: int, ds: str, preset: str = "tiny", precision: str = "fp32") -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(
        f"run_dir: {tmp / name}\nmodel: {{preset: {preset}}}\n"
        f"data: {{dataset: {tokens['dataset']}, version: {tokens['version']}}}\ndeepspeed: {ds}\n"
        f"train: {{steps: {steps}, micro_batch_size: {micro_batch}, grad_accum: 1, lr: 1.0e-3, warmup_steps: 4, precision: {precision}}}\n"
        f"checkpoint: {{every: 1000000}}\neval: {{every: 0, batches: 0}}\n"
    )
    return path


def median_metric(run_dir: Path, key: str, skip: int = 3) -> float | None:
    values = [r[key] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r.get(key) is not None]
    return statistics.median(values[skip:]) if len(values) > skip else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tokens")
    parser.add_argument("--version")
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--short", type=int, default=4)
    parser.add_argument("--long", type=int, default=20)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--configs", default="ddp,zero1,zero2,zero3", help="comma-separated subset of ddp,zero1,zero2,zero3")
    parser.add_argument("--baseline-repo", type=Path, help="another checkout whose model.train runs as zero2@baseline")
    parser.add_argument("--tokenize-docs", type=int, default=2000, help="documents for the tokenization figures (0: skip)")
    parser.add_argument("--tokenize-shards", type=int, default=8)
    parser.add_argument("--tokenize-workers", type=int, default=2)
    args = parser.parse_args()
    if args.ddp_worker:
        ddp_worker(args)
        return

    from pipeline.s3server import start_s3_server

    tmp = Path(tempfile.mkdtemp(prefix="tokenmill-bench-train-"))
    server = start_s3_server(tmp / "s3")
    try:
        env = {**os.environ, **server.env(), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
        os.environ.update(server.env())
        t0 = time.time()
        tokens = prepare_tokens(server.store(), args.docs, args.seq_len, args.vocab)
        print(f"token dataset: {tokens['splits']['train']['tokens']} train tokens in {time.time() - t0:.1f}s", flush=True)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        tokens_per_step = args.micro_batch * 2 * args.seq_len
        known = {"ddp": None, "zero1": "ds_zero1.json", "zero2": "ds_zero2.json", "zero3": "ds_zero3.json"}
        configs = [(name, known[name]) for name in args.configs.split(",")]
        if args.baseline_repo:
            configs.append(("zero2@baseline", "ds_zero2.json"))
        tokenize = None
        if args.tokenize_docs:
            tokenize = tokenize_figures(server.store(), tokens["tokenizer"], args.tokenize_docs, args.tokenize_shards, args.tokenize_workers, args.seq_len)
        cpu: dict[str, dict[int, float]] = {name: {} for name, _ in configs}
        # Interleaved (all short runs, then all long runs) so that a change in the shared
        # machine's load during the bench does not fall on one configuration only.
        for steps in (args.short, args.long):
            for name, ds in configs:
                if ds is None:
                    cmd = [*torchrun, str(Path(__file__).resolve()), "--ddp-worker", "--tokens", tokens["dataset"], "--version", tokens["version"],
                           "--steps", str(steps), "--micro-batch", str(args.micro_batch)]  # fmt: skip
                else:
                    cfg = write_config(tmp, f"{name}-{steps}", tokens, steps=steps, micro_batch=args.micro_batch, ds=ds)
                    cmd = [*torchrun, "-m", "model.train", "--config", str(cfg)]
                if name.endswith("@baseline"):
                    base = args.baseline_repo.resolve()
                    cpu[name][steps], _ = run_cpu_seconds(cmd, {**env, "PYTHONPATH": str(base)}, cwd=base)
                else:
                    cpu[name][steps], _ = run_cpu_seconds(cmd, env)
        cpu_per_step, wall_tps, startup = {}, {}, {}
        for name, ds in configs:
            cpu_per_step[name] = (cpu[name][args.long] - cpu[name][args.short]) / (args.long - args.short)
            # Launch cost before the steps: imports, process groups, engine, data, final checkpoint.
            startup[name] = cpu[name][args.short] - args.short * cpu_per_step[name]
            if ds is not None:
                wall_tps[name] = median_metric(tmp / f"{name}-{args.long}", "tokens_per_s")
            print(f"{name}: {cpu_per_step[name]:.3f} CPU-s/step = {tokens_per_step / cpu_per_step[name]:.0f} tokens per CPU-second "
                  f"(launch CPU-s: short {cpu[name][args.short]:.1f}, long {cpu[name][args.long]:.1f})", flush=True)  # fmt: skip

        gpu = gpu_figures(tmp, env, server.store()) if gpu_available() else None
        if gpu is None:
            print("GPU figures not measured: no GPU on this machine (the bench runs the 125m and 350m presets in bf16 when one is present).")
        per_cpu_s = {k: tokens_per_step / v for k, v in cpu_per_step.items()}
        ratio = {k: per_cpu_s[k] / per_cpu_s["ddp"] for k in per_cpu_s if k != "ddp"} if "ddp" in per_cpu_s else {}
        for k, r in ratio.items():
            print(f"{k} vs DDP: {r:.2f}x ({'meets' if r >= TARGET_RATIO else 'BELOW'} the {TARGET_RATIO}x target)")
        result = {
            "bench": "train",
            "unit": "tokens per CPU-second (2 CPU ranks, gloo, fp32, tiny preset)",
            "tokens_per_s": {k: round(v, 1) for k, v in per_cpu_s.items()},
            "ratio_vs_ddp": {k: round(v, 3) for k, v in ratio.items()},
            "wall_tokens_per_s": {k: round(v, 1) for k, v in wall_tps.items() if v},
            "startup_cpu_s": {k: round(v, 1) for k, v in startup.items()},
            "tokenize": tokenize,
            "seq_len": args.seq_len,
            "micro_batch_per_rank": args.micro_batch,
            "steps_measured": args.long - args.short,
            "gpu": gpu,
        }
        print(json.dumps(result))
    finally:
        server.stop()


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


def gpu_figures(tmp: Path, env: dict, store) -> dict:
    """One GPU, bf16, ZeRO-2: tokens/s and MFU of 125m and 350m at seq_len 1024 (median step)."""
    tokens = tokenize_for_gpu(store)
    out = {}
    for preset, micro_batch in [("125m", 16), ("350m", 8)]:
        cfg = write_config(tmp, f"gpu-{preset}", tokens, steps=30, micro_batch=micro_batch, ds="ds_zero2.json", preset=preset, precision="bf16")
        run_cpu_seconds([sys.executable, "-m", "model.train", "--config", str(cfg)], env)
        out[preset] = {"tokens_per_s": median_metric(tmp / f"gpu-{preset}", "tokens_per_s", skip=5), "mfu": median_metric(tmp / f"gpu-{preset}", "mfu", skip=5)}
        print(f"GPU {preset}: {out[preset]}", flush=True)
    return out


def tokenize_for_gpu(store) -> dict:
    from pipeline.tokenize import tokenize_dataset

    return tokenize_dataset("s3://bench/docs", "v1", "s3://bench/tokenizer/tokenizer.json", "s3://bench/tokens-1024", 1024, val_fraction=0.01, store=store, rows_per_group=64)


if __name__ == "__main__":
    main()
