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
import signal
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from model.checkpoint import CheckpointLocation, TrainState, safe_torch_load, tag_for
from model.data import ShardedTokenStream, TokenDataset, validation_rows
from model.flops import device_peak_flops, mfu
from model.health import DivergenceGuard
from model.llama import Llama, lm_loss
from model.metrics import RunMonitor, record_failure
from model.presets import model_config
from model.tokenizer import PAD_TOKEN, SPECIAL_TOKENS
from pipeline.names import InvalidName
from pipeline.storage import ObjectStore, StorageError

CONFIG_DIR = Path(__file__).parent / "configs"

DEFAULTS: dict = {
    "run_dir": None,
    "model": {"preset": "tiny"},  # plus any ModelConfig field as an override
    "data": {"dataset": None, "version": "latest", "skip_steps": 0},
    "deepspeed": "ds_zero2.json",
    "train": {
        "steps": 100,
        "micro_batch_size": 8,
        "grad_accum": 1,
        "lr": 3e-4,
        "lr_scale": None,
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
    "health": {"window": 50, "spike_ratio": 2.0, "spike_patience": 3, "max_skipped_steps": 5, "rise_ratio": 1.5},
    "device": {"peak_flops": None},
    "dist": {"timeout_s": 600},
    "debug": {"stall_at_step": None, "nan_at_step": None, "explode_lr_at_step": None, "die_in_checkpoint_at_step": None},
}


class TrainingError(RuntimeError):
    """Training cannot go on: one clear line, non-zero exit, and a failure record of `kind`."""

    kind = "error"

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.details = details


class ConfigError(TrainingError):
    """Will fail the same way on every retry (bad config, data that does not match the run)."""

    kind = "config"


class Diverged(TrainingError):
    kind = "diverged"


# -- configuration -------------------------------------------------------------------------


def _merge(base: dict, override: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        where = f"{path}{key}"
        if key not in base and not (path == "model." or path == "deepspeed."):
            raise ConfigError(f"unknown config key {where!r}")
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = _merge(base[key], value, where + ".")
        else:
            out[key] = value
    return out


def set_dotted(cfg: dict, assignment: str) -> None:
    """Apply `a.b.c=value` (value parsed as YAML: numbers, booleans, null, lists)."""
    key, sep, raw = assignment.partition("=")
    if not sep:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
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
        raise ConfigError("config needs run_dir")
    if not cfg["data"]["dataset"]:
        raise ConfigError("config needs data.dataset (a token dataset URI from `tokenmill tokenize`)")
    if cfg["train"]["steps"] < 1 or cfg["train"]["micro_batch_size"] < 1 or cfg["train"]["grad_accum"] < 1:
        raise ConfigError("train.steps, train.micro_batch_size and train.grad_accum must be positive")
    return cfg


def _ds_config_path(name: str) -> Path:
    """A path, or the name of a file shipped in model/configs/."""
    path = Path(name)
    if path.exists():
        return path
    if (CONFIG_DIR / path.name).exists():
        return CONFIG_DIR / path.name
    raise ConfigError(f"ds_config not found: {name}")


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


def set_lr_scale(engine, factor, scale: float) -> None:
    """Multiply the schedule by `scale` from the current step on (a restart after a divergence
    lowers the learning rate). LambdaLR saves no lambdas in its state, so this is applied again
    after every load; `TrainState.lr_scale` carries the value across resumes."""
    sched = engine.lr_scheduler
    sched.lr_lambdas = [lambda s: factor(s) * scale for _ in sched.base_lrs]
    for group, base, fn in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base * fn(sched.last_epoch)


class StopSignal:
    """SIGTERM (sent by Slurm `--signal` before a time limit, by Kubernetes and torchrun at
    shutdown, by a preemption): save a checkpoint at the next step boundary and stop, instead
    of dying with the work since the last periodic checkpoint."""

    def __init__(self):
        self.received: str | None = None
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name


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
    # ZeRO imports DeepSpeed's Muon optimizer on every launch (to recognise it), and that
    # module wraps its kernels in torch.compile at import time, which imports Inductor: ~5
    # CPU-s per rank before step 1, for an optimizer tokenmill never runs. Imported once here
    # with DeepSpeed's own no-op decorator instead, the kernels stay plain eager functions.
    compiler = importlib.import_module("deepspeed.runtime.compiler")
    compile_decorator, compiler.compile = compiler.compile, lambda: compiler.dummy_decorator
    try:
        importlib.import_module("deepspeed.runtime.zero.muon.original_muon")
    finally:
        compiler.compile = compile_decorator
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
        raise ConfigError(f"train.precision must be auto, bf16 or fp32, not {requested!r}")
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


def _reduce_step(loss: torch.Tensor, stop: bool) -> tuple[float, bool]:
    """One collective per step: the mean loss over ranks, and whether any rank was asked to stop."""
    both = torch.stack([loss.double(), torch.tensor(float(stop), dtype=torch.float64, device=loss.device)])
    dist.all_reduce(both)
    return both[0].item() / dist.get_world_size(), both[1].item() > 0


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


def open_tokens(cfg: dict, store: ObjectStore) -> TokenDataset:
    try:
        return TokenDataset(cfg["data"]["dataset"], cfg["data"]["version"], store)
    except StorageError as exc:
        raise ConfigError(str(exc)) from exc


def check_same_run(meta: dict, tag: str, tokens: TokenDataset, model: dict, run_dir: Path) -> None:
    """A run name is one run: its checkpoint must have been trained on this token dataset,
    with this tokenizer and this model shape, or resuming it would silently mix two runs."""
    differences = [
        f"{what}: checkpoint {had!r}, now {now!r}"
        for what, had, now in [("token dataset", meta.get("data"), tokens.version.uri), ("tokenizer", meta.get("tokenizer"), tokens.tokenizer_uri)]
        if had != now
    ] + [f"model.{k}: checkpoint {meta.get('model', {}).get(k)!r}, now {v!r}" for k, v in model.items() if meta.get("model", {}).get(k) != v]
    if differences:
        raise ConfigError(
            f"the run in {run_dir} has checkpoint {tag} from a different setup ({'; '.join(differences)}); "
            "give this training another run name, or remove the old checkpoints to start over"
        )


def resume_from_checkpoint(ckpt: CheckpointLocation, engine, stream, state: TrainState, cfg: dict, tokens: TokenDataset, model: dict) -> str | None:
    """Load the checkpoint to continue from (every rank). Rank 0 decides which one and tells
    the others, so that all ranks load the same tag."""
    rank, local_rank = dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0))
    choice: list = [None, None, None, None]
    if rank == 0:
        try:
            tag, note = ckpt.resume_tag()
            choice = [tag, note, ckpt.read_meta(tag) if tag else None, None]
        except (FileNotFoundError, InvalidName) as exc:
            choice = [None, None, None, str(exc)]
    dist.broadcast_object_list(choice, src=0)
    tag, note, meta, error = choice
    if error:
        raise ConfigError(error)
    if tag is None:
        if rank == 0:
            print(f"model.train: no checkpoint at {ckpt.uri}; starting from step 0", file=sys.stderr, flush=True)
        return None
    if note and rank == 0:
        print(f"model.train: {note}", file=sys.stderr, flush=True)
    check_same_run(meta, tag, tokens, model, Path(cfg["run_dir"]))
    if local_rank == 0:
        ckpt.download(tag)
    dist.barrier()
    with safe_torch_load():
        load_path, _ = engine.load_checkpoint(str(ckpt.local_dir), tag)
    if load_path is None:
        raise TrainingError(f"DeepSpeed could not load checkpoint {tag} from {ckpt.local_dir}")
    ckpt.load_train_state(tag, rank, state)
    stream.load_state_dict(state.data)
    return tag


def train(cfg: dict, resume: bool = False) -> dict:
    """Run (or continue) one launch. Every rank beats from the first moment (phase `init`), so
    that the watcher can tell slow start-up from a dead rank."""
    run_dir = Path(cfg["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    monitor = RunMonitor(run_dir, int(os.environ.get("RANK", 0)), tensorboard=cfg["log"]["tensorboard"])
    try:
        return _train(cfg, resume, monitor)
    finally:
        monitor.close()


def _train(cfg: dict, resume_run: bool, monitor: RunMonitor) -> dict:
    start_wall = time.time()
    stop = StopSignal()
    deepspeed = init_distributed(cfg["dist"]["timeout_s"])
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    t, debug = cfg["train"], cfg["debug"]
    if not cuda:
        # Threads beyond the cores available per rank only contend (measured: 2.4x CPU per token).
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(t["cpu_threads"] or max(1, len(os.sched_getaffinity(0)) // local_world))
    precision = pick_precision(t["precision"])

    run_dir = Path(cfg["run_dir"])
    store = ObjectStore()
    tokens = open_tokens(cfg, store)
    seq_len, width = tokens.seq_len, tokens.seq_len + 1
    tokenizer_json = store.get_bytes(tokens.tokenizer_uri)
    pad = SPECIAL_TOKENS.index(PAD_TOKEN)

    overrides = {k: v for k, v in cfg["model"].items() if k != "preset"}
    overrides.setdefault("vocab_size", -(-tokens.vocab_size // 64) * 64)  # a multiple of 64 keeps matmuls aligned
    try:
        mcfg = model_config(cfg["model"]["preset"], **overrides)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model: {exc}") from exc
    if mcfg.vocab_size < tokens.vocab_size:
        raise ConfigError(f"model.vocab_size {mcfg.vocab_size} is smaller than the tokenizer's {tokens.vocab_size}")
    mcfg.max_seq_len = max(mcfg.max_seq_len, seq_len)
    torch.manual_seed(t["seed"])  # the same initial weights on every rank
    model = Llama(mcfg)
    if t["activation_checkpointing"]:
        apply_activation_checkpointing(model)
    ds = ds_config(cfg, world, precision)
    engine = build_engine(deepspeed, model, cfg, ds)
    schedule = lr_lambda(t["warmup_steps"], t["steps"], t["min_lr_ratio"])
    torch.manual_seed(t["seed"] + rank)

    ckpt = CheckpointLocation(cfg["checkpoint"]["uri"] or str(run_dir / "checkpoints"), run_dir / "checkpoint-staging", store)
    try:
        stream = ShardedTokenStream(store, tokens.row_groups("train"), width, rank=rank, world=world, seed=t["seed"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    val_rows = None
    if cfg["eval"]["every"] and cfg["eval"]["batches"]:
        val_rows = validation_rows(store, tokens.row_groups("val"), width, rank=rank, world=world, count=cfg["eval"]["batches"] * t["micro_batch_size"])
    state = TrainState()
    resumed_tag = None
    if resume_run:
        with monitor.heartbeat.in_phase("load"):
            try:
                resumed_tag = resume_from_checkpoint(ckpt, engine, stream, state, cfg, tokens, mcfg.to_dict())
            except ValueError as exc:  # a data position that does not fit this launch
                raise ConfigError(str(exc)) from exc
    state.lr_scale = t["lr_scale"] if t["lr_scale"] is not None else state.lr_scale
    if state.lr_scale != 1.0:
        set_lr_scale(engine, schedule, state.lr_scale)
    if cfg["data"]["skip_steps"]:
        stream.skip(cfg["data"]["skip_steps"] * t["micro_batch_size"] * t["grad_accum"])
    if rank == 0:
        if state.lr_scale != 1.0 or cfg["data"]["skip_steps"]:
            print(f"model.train: from step {state.step}: learning rate x{state.lr_scale:g}, skipping the data of {cfg['data']['skip_steps']} step(s)", file=sys.stderr, flush=True)
        (run_dir / "config.json").write_text(json.dumps({"config": cfg, "model": mcfg.to_dict(), "ds_config": ds, "world": world, "precision": precision}, indent=1, default=str))
    peak = cfg["device"]["peak_flops"] or (device_peak_flops(torch.cuda.get_device_name(device), precision) if cuda else None)
    if cuda and peak is None and rank == 0:
        print(f"model.train: no peak FLOP/s known for {torch.cuda.get_device_name(device)!r} in {precision}; MFU is null (set device.peak_flops)", file=sys.stderr, flush=True)
    flops_per_token = model.flops_per_token(seq_len)
    tokens_per_step = t["micro_batch_size"] * t["grad_accum"] * world * seq_len
    guard = DivergenceGuard(**cfg["health"])

    def save(step: int) -> str:
        tag = tag_for(step)
        with monitor.heartbeat.in_phase("save"):
            if rank == 0 or (ckpt.remote and local_rank == 0):
                ckpt.clear(tag, remote=rank == 0)
            dist.barrier()
            state.data = stream.state_dict()
            engine.save_checkpoint(str(ckpt.local_dir), tag=tag, client_state={"step": step}, save_latest=False)
            if debug["die_in_checkpoint_at_step"] == step and rank == world - 1:
                print(f"model.train: debug.die_in_checkpoint_at_step={step}: rank {rank} dies inside the checkpoint on purpose", file=sys.stderr, flush=True)
                os._exit(43)
            ckpt.save_train_state(tag, rank, state)
            if rank == 0:
                ckpt.write_tokenizer(tag, tokenizer_json)
            dist.barrier()
            if local_rank == 0:
                ckpt.upload(tag)
            dist.barrier()
            if rank == 0:
                meta = {"step": step, "model": mcfg.to_dict(), "seq_len": seq_len, "tokenizer": tokens.tokenizer_uri, "data": tokens.version.uri, "precision": precision, "world": world}
                ckpt.commit(tag, meta)
        return ckpt.tag_uri(tag)

    last_saved = state.step if resumed_tag else -1
    checkpoint_uri = ckpt.tag_uri(resumed_tag) if resumed_tag else None
    stop_requested = False
    # stop_after ends this launch early (a job time limit); the LR schedule still spans train.steps.
    end = min(t["steps"], t["stop_after"] or t["steps"])
    monitor.heartbeat.set_phase("train")
    while state.step < end and not stop_requested:
        step = state.step + 1
        if debug["stall_at_step"] == step and rank == 0:
            print(f"model.train: debug.stall_at_step={step}: rank 0 stalls here on purpose", file=sys.stderr, flush=True)
            while True:
                time.sleep(3600)
        if debug["explode_lr_at_step"] == step:
            set_lr_scale(engine, schedule, state.lr_scale * 1000)  # fault injection: a real blow-up, not a fake loss
        t0 = time.perf_counter()
        lr = engine.get_lr()[0]
        skipped_before = engine.skipped_steps
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # stays on device: one sync per step
        for _ in range(t["grad_accum"]):
            batch = torch.from_numpy(stream.next_batch(t["micro_batch_size"])).to(device=device, dtype=torch.long, non_blocking=True)
            loss = lm_loss(engine(batch[:, :-1]), batch[:, 1:], pad)
            engine.backward(loss)
            engine.step()
            loss_sum += loss.detach()
        if debug["nan_at_step"] == step:
            loss_sum.fill_(float("nan"))  # fault injection: exercises the divergence check below
        loss_mean, stop_requested = _reduce_step(loss_sum / t["grad_accum"], stop.received is not None)
        skipped = engine.skipped_steps > skipped_before  # DeepSpeed skipped the update (overflow)
        divergence = guard.observe(step, loss_mean, skipped)
        if divergence is not None and not math.isfinite(loss_mean):
            raise Diverged(divergence.reason, step=divergence.step, since_step=divergence.since_step)
        elapsed = time.perf_counter() - t0
        state.step, state.last_loss = step, loss_mean
        state.tokens_seen += tokens_per_step
        monitor.heartbeat.progress(step)
        if step % cfg["log"]["every"] == 0 or step == t["steps"] or divergence is not None:
            tps = tokens_per_step / elapsed
            grad_norm = engine.get_global_grad_norm()
            monitor.log({
                "step": step, "loss": loss_mean, "lr": lr,
                "grad_norm": float(grad_norm) if grad_norm is not None else None, "skipped": skipped,
                "tokens_per_s": tps, "mfu": mfu(flops_per_token, tps, peak, world),
                "tokens_seen": state.tokens_seen, "time": time.time(), "mem_gb": _memory_gb(device),
            })  # fmt: skip
        if divergence is not None:
            raise Diverged(divergence.reason, step=divergence.step, since_step=divergence.since_step)
        if val_rows is not None and (step % cfg["eval"]["every"] == 0 or step == t["steps"]):
            with monitor.heartbeat.in_phase("eval"):
                state.last_val_loss, ppl = evaluate(engine, val_rows, t["micro_batch_size"], pad, device)
            monitor.log({"step": step, "val_loss": state.last_val_loss, "val_ppl": ppl, "time": time.time()})
        if step % cfg["checkpoint"]["every"] == 0 or step == end or stop_requested:
            checkpoint_uri = save(step)
            last_saved = step
    if last_saved != state.step:  # nothing trained in this launch and no checkpoint yet (a stop during start-up)
        checkpoint_uri = save(state.step)
    stream.close()
    result = {
        "step": state.step, "final_loss": state.last_loss, "val_loss": state.last_val_loss,
        "tokens_seen": state.tokens_seen, "wall_s": time.time() - start_wall, "checkpoint": checkpoint_uri,
    }  # fmt: skip
    dist.barrier()
    if state.step == t["steps"]:
        monitor.completed(result)  # rank 0's very last act
    else:
        reason = f"received {stop.received}" if stop_requested else f"train.stop_after={t['stop_after']}"
        monitor.stopped({**result, "reason": reason})
    return result


def _run_dir_of(config_path: str) -> str | None:
    """The run directory named by a config that failed to load, if it names one (for the failure record)."""
    try:
        raw = yaml.safe_load(Path(config_path).read_text())
        return raw.get("run_dir") if isinstance(raw, dict) else None
    except (OSError, yaml.YAMLError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.train", description="Train a Llama-style model with DeepSpeed ZeRO.")
    parser.add_argument("--config", required=True, help="YAML training config (see model/configs/README.md)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, dotted (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint, if any")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    run_dir = None
    try:
        cfg = load_config(args.config, args.set)
        run_dir = cfg["run_dir"]
        train(cfg, resume=args.resume)
    except TrainingError as exc:
        print(f"model.train: error (rank {rank}): {exc.kind}: {exc}", file=sys.stderr, flush=True)
        run_dir = run_dir or _run_dir_of(args.config)
        if run_dir:
            record_failure(run_dir, rank, exc.kind, str(exc), **exc.details)
        return 1
    except Exception as exc:
        if run_dir:
            record_failure(run_dir, rank, "error", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
