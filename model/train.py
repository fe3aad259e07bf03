"""Training entry point: `python -m model.train --config cfg.yaml [--set key=value] [--resume]`.

Launch with `torchrun --nproc_per_node N -m model.train ...` (or plain `python -m` for one
process). DeepSpeed applies ZeRO (stage from the ds_config) in exactly one place,
`build_engine`; the model module knows nothing of it. Config keys are documented in
model/configs/README.md; the run directory contract in model/metrics.py.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import os
import resource
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from model.checkpoint import CheckpointLocation, TrainState, tag_for
from model.data import ShardedTokenStream, TokenDataset, validation_rows
from model.flops import device_peak_flops, mfu
from model.llama import Llama, lm_loss
from model.metrics import RunMonitor
from model.presets import model_config
from model.tokenizer import PAD_TOKEN, SPECIAL_TOKENS
from pipeline.storage import ObjectStore

CONFIG_DIR = Path(__file__).parent / "configs"

DEFAULTS: dict = {
    "run_dir": None,
    "model": {"preset": "tiny"},  # plus any ModelConfig field as an override
    "data": {"dataset": None, "version": "latest"},
    "deepspeed": "ds_zero2.json",
    "train": {
        "steps": 100,
        "micro_batch_size": 8,
        "grad_accum": 1,
        "lr": 3e-4,
        "min_lr_ratio": 0.1,
        "warmup_steps": 10,
        "weight_decay": 0.1,
        "betas": [0.9, 0.95],
        "eps": 1e-8,
        "grad_clip": 1.0,
        "seed": 1234,
        "precision": "auto",
        "activation_checkpointing": False,
        "cpu_threads": None,
        "stop_after": None,
    },
    "checkpoint": {"uri": None, "every": 100},
    "eval": {"every": 100, "batches": 4},
    "log": {"every": 1, "tensorboard": False},
    "device": {"peak_flops": None},
    "dist": {"timeout_s": 600},
    "debug": {"stall_at_step": None, "nan_at_step": None},
}


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, bad config): one clear line, non-zero exit."""


# -- configuration -------------------------------------------------------------------------


def _merge(base: dict, override: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        where = f"{path}{key}"
        if key not in base and not (path == "model." or path == "deepspeed."):
            raise TrainingError(f"unknown config key {where!r}")
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = _merge(base[key], value, where + ".")
        else:
            out[key] = value
    return out


def set_dotted(cfg: dict, assignment: str) -> None:
    """Apply `a.b.c=value` (value parsed as YAML: numbers, booleans, null, lists)."""
    key, sep, raw = assignment.partition("=")
    if not sep:
        raise TrainingError(f"--set expects key=value, got {assignment!r}")
    node = cfg
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = yaml.safe_load(raw)


def load_config(path: str | None, overrides: list[str] = ()) -> dict:
    raw: dict = {}
    if path:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    for assignment in overrides:
        set_dotted(raw, assignment)
    cfg = _merge(DEFAULTS, raw)
    if not cfg["run_dir"]:
        raise TrainingError("config needs run_dir")
    if not cfg["data"]["dataset"]:
        raise TrainingError("config needs data.dataset (a token dataset URI from `tokenmill tokenize`)")
    if cfg["train"]["steps"] < 1 or cfg["train"]["micro_batch_size"] < 1 or cfg["train"]["grad_accum"] < 1:
        raise TrainingError("train.steps, train.micro_batch_size and train.grad_accum must be positive")
    return cfg


def _ds_config_path(name: str) -> Path:
    """A path, or the name of a file shipped in model/configs/."""
    path = Path(name)
    if path.exists():
        return path
    if (CONFIG_DIR / path.name).exists():
        return CONFIG_DIR / path.name
    raise TrainingError(f"ds_config not found: {name}")


def ds_config(cfg: dict, world: int, precision: str) -> dict:
    """The ds_config from file (or inline) with the keys the trainer owns filled in from `train`."""
    source = cfg["deepspeed"]
    ds = copy.deepcopy(source) if isinstance(source, dict) else json.loads(_ds_config_path(source).read_text())
    t = cfg["train"]
    ds["train_micro_batch_size_per_gpu"] = t["micro_batch_size"]
    ds["gradient_accumulation_steps"] = t["grad_accum"]
    ds["train_batch_size"] = t["micro_batch_size"] * t["grad_accum"] * world
    ds["gradient_clipping"] = t["grad_clip"]
    ds["bf16"] = {"enabled": precision == "bf16"}
    ds.pop("fp16", None)
    params = ds.setdefault("optimizer", {"type": "AdamW"}).setdefault("params", {})
    params.update(lr=t["lr"], betas=list(t["betas"]), eps=t["eps"], weight_decay=t["weight_decay"])
    params.setdefault("torch_adam", True)  # DeepSpeed's FusedAdam would be JIT-compiled first
    ds.setdefault("steps_per_print", 10**9)
    return ds


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warmup to the peak over `warmup` steps, then cosine decay to `min_ratio` of it."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# -- distributed setup -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(timeout_s: int):
    """Set up the process group (gloo on CPU, NCCL on GPUs) and import DeepSpeed for it."""
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    cuda = torch.cuda.is_available()
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cuda else "cpu")
    import deepspeed

    # Training never uses DeepSpeed's shared-memory op; building it costs a 60-80 s JIT compile.
    # (Must go through importlib: `import deepspeed.comm.torch` resolves to torch's module.)
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    # DeepSpeed creates its own groups with torch's default timeout (30 min): a hung rank
    # must fail the job within our timeout instead.
    timeout = timedelta(seconds=timeout_s)
    torch.distributed.distributed_c10d.default_pg_timeout = timeout
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", timeout=timeout)
    deepspeed.utils.logger.setLevel("WARNING")
    return deepspeed


def pick_precision(requested: str) -> str:
    if requested == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if requested not in ("bf16", "fp32"):
        raise TrainingError(f"train.precision must be auto, bf16 or fp32, not {requested!r}")
    return requested


def apply_activation_checkpointing(model: Llama) -> None:
    """Recompute each block's activations in the backward pass (keeps parameter names)."""
    from torch.utils.checkpoint import checkpoint

    for block in model.layers:
        forward = block.forward
        block.forward = lambda *args, _f=forward: checkpoint(_f, *args, use_reentrant=False)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (matmuls, embedding); none on norm gains."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_engine(deepspeed, model: Llama, cfg: dict, ds: dict):
    """The one place ZeRO is applied: DeepSpeed wraps model, optimizer and LR schedule."""
    t = cfg["train"]
    schedule = lr_lambda(t["warmup_steps"], t["steps"], t["min_lr_ratio"])
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=param_groups(model, t["weight_decay"]),
        config=ds,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
    )
    return engine


# -- the loop ------------------------------------------------------------------------------


def _all_mean(value: torch.Tensor) -> float:
    value = value.clone()
    dist.all_reduce(value)
    return value.item() / dist.get_world_size()


def _memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


@torch.no_grad()
def evaluate(engine, rows: np.ndarray, micro_batch: int, pad: int, device: torch.device) -> tuple[float, float]:
    """Token-weighted validation loss over this rank's rows, combined across ranks."""
    engine.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for start in range(0, len(rows), micro_batch):
        batch = torch.from_numpy(rows[start : start + micro_batch]).to(device=device, dtype=torch.long)
        logits = engine(batch[:, :-1])
        targets = batch[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=pad, reduction="sum")
        total += torch.stack([loss.double(), (targets != pad).sum().double()])
    engine.train()
    dist.all_reduce(total)
    val_loss = (total[0] / total[1].clamp(min=1)).item()
    return val_loss, math.exp(min(val_loss, 50.0))


def train(cfg: dict, resume: bool = False) -> dict:
    start_wall = time.time()
    deepspeed = init_distributed(cfg["dist"]["timeout_s"])
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    t = cfg["train"]
    if not cuda:
        # Threads beyond the cores available per rank only contend (measured: 2.4x CPU per token).
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(t["cpu_threads"] or max(1, len(os.sched_getaffinity(0)) // local_world))
    precision = pick_precision(t["precision"])

    run_dir = Path(cfg["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    store = ObjectStore()
    tokens = TokenDataset(cfg["data"]["dataset"], cfg["data"]["version"], store)
    seq_len, width = tokens.seq_len, tokens.seq_len + 1
    tokenizer_json = store.get_bytes(tokens.tokenizer_uri)
    pad = SPECIAL_TOKENS.index(PAD_TOKEN)

    overrides = {k: v for k, v in cfg["model"].items() if k != "preset"}
    overrides.setdefault("vocab_size", -(-tokens.vocab_size // 64) * 64)  # a multiple of 64 keeps matmuls aligned
    mcfg = model_config(cfg["model"]["preset"], **overrides)
    if mcfg.vocab_size < tokens.vocab_size:
        raise TrainingError(f"model.vocab_size {mcfg.vocab_size} is smaller than the tokenizer's {tokens.vocab_size}")
    mcfg.max_seq_len = max(mcfg.max_seq_len, seq_len)
    torch.manual_seed(t["seed"])  # the same initial weights on every rank
    model = Llama(mcfg)
    if t["activation_checkpointing"]:
        apply_activation_checkpointing(model)
    ds = ds_config(cfg, world, precision)
    engine = build_engine(deepspeed, model, cfg, ds)
    torch.manual_seed(t["seed"] + rank)

    ckpt = CheckpointLocation(cfg["checkpoint"]["uri"] or str(run_dir / "checkpoints"), run_dir / "checkpoint-staging", store)
    stream = ShardedTokenStream(store, tokens.row_groups("train"), width, rank=rank, world=world, seed=t["seed"])
    val_rows = None
    if cfg["eval"]["every"] and cfg["eval"]["batches"]:
        val_rows = validation_rows(store, tokens.row_groups("val"), width, rank=rank, world=world, count=cfg["eval"]["batches"] * t["micro_batch_size"])
    state = TrainState()
    monitor = RunMonitor(run_dir, rank, tensorboard=cfg["log"]["tensorboard"])

    if resume:
        tag = ckpt.latest_tag()
        if tag is None:
            if rank == 0:
                print(f"model.train: no checkpoint at {ckpt.uri}; starting from step 0", file=sys.stderr)
        else:
            if local_rank == 0:
                ckpt.download(tag)
            dist.barrier()
            load_path, _ = engine.load_checkpoint(str(ckpt.local_dir), tag)
            if load_path is None:
                raise TrainingError(f"DeepSpeed could not load checkpoint {tag} from {ckpt.local_dir}")
            ckpt.load_train_state(tag, rank, state)
            stream.load_state_dict(state.data)

    if rank == 0:
        (run_dir / "config.json").write_text(json.dumps({"config": cfg, "model": mcfg.to_dict(), "ds_config": ds, "world": world, "precision": precision}, indent=1, default=str))
    peak = cfg["device"]["peak_flops"] or (device_peak_flops(torch.cuda.get_device_name(device), precision) if cuda else None)
    flops_per_token = model.flops_per_token(seq_len)
    tokens_per_step = t["micro_batch_size"] * t["grad_accum"] * world * seq_len
    stall_at, nan_at = cfg["debug"]["stall_at_step"], cfg["debug"]["nan_at_step"]

    def save(step: int) -> str:
        tag = tag_for(step)
        state.data = stream.state_dict()
        engine.save_checkpoint(str(ckpt.local_dir), tag=tag, client_state={"step": step})
        ckpt.save_train_state(tag, rank, state)
        if rank == 0:
            meta = {"step": step, "model": mcfg.to_dict(), "seq_len": seq_len, "tokenizer": tokens.tokenizer_uri, "data": tokens.version.uri, "precision": precision, "world": world}
            ckpt.write_meta(tag, meta, tokenizer_json)
        dist.barrier()
        if local_rank == 0:
            ckpt.upload(tag)
        dist.barrier()
        if rank == 0:
            ckpt.publish(tag)
        return ckpt.tag_uri(tag)

    last_loss = float("nan")
    last_saved = state.step if resume else -1
    checkpoint_uri = None
    # stop_after ends this launch early (a job time limit); the LR schedule still spans train.steps.
    end = min(t["steps"], t["stop_after"] or t["steps"])
    while state.step < end:
        step = state.step + 1
        if stall_at is not None and step == stall_at and rank == 0:
            print(f"model.train: debug.stall_at_step={stall_at}: rank 0 stalls here on purpose", file=sys.stderr, flush=True)
            while True:
                time.sleep(3600)
        t0 = time.perf_counter()
        lr = engine.get_lr()[0]
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # stays on device: one sync per step
        for _ in range(t["grad_accum"]):
            batch = torch.from_numpy(stream.next_batch(t["micro_batch_size"])).to(device=device, dtype=torch.long, non_blocking=True)
            loss = lm_loss(engine(batch[:, :-1]), batch[:, 1:], pad)
            engine.backward(loss)
            engine.step()
            loss_sum += loss.detach()
        if nan_at is not None and step == nan_at:
            loss_sum.fill_(float("nan"))  # fault injection: exercises the divergence check below
        last_loss = _all_mean(loss_sum / t["grad_accum"])
        if not math.isfinite(last_loss):
            raise TrainingError(f"loss is {last_loss} at step {step} (lr {lr:.3g}); stopping: lower train.lr or check the data")
        elapsed = time.perf_counter() - t0
        state.step = step
        state.tokens_seen += tokens_per_step
        monitor.heartbeat()
        if step % cfg["log"]["every"] == 0 or step == t["steps"]:
            tps = tokens_per_step / elapsed
            grad_norm = engine.get_global_grad_norm()
            monitor.log({
                "step": step, "loss": last_loss, "lr": lr,
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "tokens_per_s": tps, "mfu": mfu(flops_per_token, tps, peak, world),
                "tokens_seen": state.tokens_seen, "time": time.time(), "mem_gb": _memory_gb(device),
            })  # fmt: skip
        if val_rows is not None and (step % cfg["eval"]["every"] == 0 or step == t["steps"]):
            state.last_val_loss, ppl = evaluate(engine, val_rows, t["micro_batch_size"], pad, device)
            monitor.log({"step": step, "val_loss": state.last_val_loss, "val_ppl": ppl, "time": time.time()})
        if step % cfg["checkpoint"]["every"] == 0 or step == end:
            checkpoint_uri = save(step)
            last_saved = step
    if last_saved != state.step:  # resumed at the end already: make sure a final checkpoint exists
        checkpoint_uri = save(state.step)
    stream.close()
    result = {
        "step": state.step, "final_loss": last_loss, "val_loss": state.last_val_loss,
        "tokens_seen": state.tokens_seen, "wall_s": time.time() - start_wall, "checkpoint": checkpoint_uri,
    }  # fmt: skip
    dist.barrier()
    monitor.close()
    if state.step == t["steps"]:
        monitor.completed(result)  # rank 0's very last act
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.train", description="Train a Llama-style model with DeepSpeed ZeRO.")
    parser.add_argument("--config", required=True, help="YAML training config (see model/configs/README.md)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, dotted (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint, if any")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        train(cfg, resume=args.resume)
    except (TrainingError, FileNotFoundError, ValueError) as exc:
        print(f"model.train: error (rank {os.environ.get('RANK', 0)}): {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
