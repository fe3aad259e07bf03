"""The `train` flow: tokenize a dataset version (once, one mapped task per shard), submit a
DeepSpeed job to a backend (local, Slurm, Kubernetes), watch it, restart it when it fails,
stalls, diverges or hits a time limit, then export the model and report.

One run name is one run directory (`<runs_dir>/<run_name>`): re-running a flow with the same
name adopts the run's job if it still runs (a flow process that was killed leaves it
running), reports the finished run if it already finished, and otherwise resumes from the
run's checkpoint. The run directory must be reachable from the flow and from every rank
(shared filesystem on Slurm, a shared volume on Kubernetes): metrics, heartbeats,
checkpoints and the trainer's records are read from there.

Restart policy, by the watcher's verdict (flows/watch.py):
- `interrupted` (time limit, preemption): resubmit; free while the checkpoint advances.
- `diverged`: point `latest` back to the newest complete checkpoint before the trouble began
  (one further back each time the same place diverges again), skip the data window between
  that checkpoint and the detection, and lower the learning rate: a bit-exact resume of a
  real divergence would only diverge again.
- `config_error`, `queue_timeout`, or the same failure twice at the same step: no retry.
- `stalled`, `failed`: resume from the latest checkpoint, at most `max_restarts` times.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.events import DeploymentEventTrigger
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from flows.train_report import artifact_key, publish, summarize
from flows.watch import COMPLETION_FILE, FAILURES_DIR, HEARTBEAT_DIR, STOPPED_FILE, AttemptWatcher, MetricsLog, Verdict
from infra.backends import JobBackend, JobHandle, JobSpec, make_backend
from model.metrics import write_json_atomic
from pipeline import lease, names
from pipeline.dataset import latest_version
from pipeline.lineage import record_training_run
from pipeline.settings import StorageSettings, data_root, lease_ttl_s, tokenmill_home
from pipeline.storage import ObjectStore, basename, join

JOB_FILE = "job.json"  # the running attempt: its handle, attempt number and submission time
JOBS_LEDGER = "jobs.json"  # every job of the run: submitted and ended (device time across flow runs)
DATASET_READY_EVENT = "tokenmill.dataset.ready"


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nodes: int = Field(1, ge=1)
    procs_per_node: int = Field(2, ge=1, description="ranks per node (GPUs per node on GPU machines)")
    cpus_per_node: int | None = Field(None, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    memory_gb: float | None = Field(None, gt=0)
    time_limit_s: int | None = Field(None, gt=0, description="per job; the run continues in a new job after it")


# Trainer keys the flow sets (trainer_config, restarts): not overridable, with what to use instead.
FLOW_OWNED_TRAINER_KEYS = {
    "run_dir": "use runs_dir and run_name",
    "model.preset": "use model_preset",
    "data": "use dataset_uri and dataset_version (a rollback sets data.skip_steps)",
    "deepspeed": "use ds_config (a DeepSpeed config file)",
    "train.steps": "use steps",
    "train.micro_batch_size": "use micro_batch_size",
    "train.grad_accum": "use grad_accum",
    "train.lr": "use lr",
    "train.lr_scale": "a rollback after a divergence sets it (divergence_lr_factor)",
    "train.warmup_steps": "use warmup_steps",
    "train.seed": "use seed",
    "train.stop_after": "a stop without finishing counts as a failed attempt; use steps",
    "checkpoint.uri": "use checkpoint_uri",
    "checkpoint.every": "use checkpoint_every",
    "eval.every": "use eval_every",
}


class TrainParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_name: str | None = Field(None, description="default: <dataset name>-<version>; one name is one run")
    dataset_uri: str = Field(description="a corpus dataset (s3:// URI or local path)")
    dataset_version: str = Field("latest", description="a sealed version id, or 'latest'")
    tokenizer_uri: str | None = Field(None, description="an existing tokenizer.json; None trains one from the dataset")
    vocab_size: int = Field(8192, ge=258)
    tokenizer_max_docs: int | None = Field(50_000, ge=1)
    seq_len: int = Field(256, ge=8)
    val_fraction: float = Field(0.02, ge=0.0, lt=1.0)
    tokens_uri: str | None = Field(None, description="where token shards go; default <dataset_uri>/tokens")
    rows_per_group: int | None = Field(None, ge=1, description="sequences per token row group; default ~4 MB")
    tokenize_workers: int = Field(2, ge=1, le=64, description="input shards tokenized at once (threads)")

    model_preset: str = "tiny"
    ds_config: str | None = Field(None, description="DeepSpeed config JSON path; None = the trainer's ZeRO-2 default")
    steps: int = Field(100, ge=1)
    micro_batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(3e-4, gt=0)
    warmup_steps: int = Field(10, ge=0)
    seed: int = Field(1234, description="weights init and data order")
    checkpoint_every: int = Field(50, ge=1)
    eval_every: int = Field(50, ge=1)
    checkpoint_uri: str | None = Field(None, description="checkpoint root; default <run_dir>/checkpoints")
    trainer_overrides: dict[str, Any] = Field(
        default_factory=dict, description="other trainer config keys, dotted (model/configs/README.md)"
    )
    first_attempt_overrides: dict[str, Any] = Field(
        default_factory=dict, description="applied to the first attempt only (fault injection: debug.stall_at_step)"
    )

    backend: Literal["local", "slurm", "kubernetes"] = "local"
    backend_options: dict[str, Any] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    max_restarts: int = Field(3, ge=0, description="failed, stalled or diverged attempts to retry")
    divergence_lr_factor: float = Field(0.5, gt=0, le=1, description="learning rate multiplier after each divergence")
    divergence_skip_data: bool = Field(True, description="skip the data between the rollback checkpoint and the divergence")
    queue_timeout_s: float = Field(6 * 3600.0, gt=0, description="a job that has not started (queued, unschedulable) for this long fails")
    startup_timeout_s: float = Field(900.0, gt=0, description="from the job running until every rank beats and finishes start-up")
    stall_timeout_s: float = Field(300.0, gt=0, description="a rank silent, or no rank progressing, for this long is a stall")
    phase_timeout_s: float = Field(3600.0, gt=0, description="the longest one checkpoint save or load, or one evaluation, may take")
    poll_s: float = Field(2.0, gt=0)

    runs_dir: str | None = Field(None, description="local/shared folder for run directories; default $TOKENMILL_HOME/runs")
    output_uri: str | None = Field(None, description="where run outputs are uploaded; default <data root>/runs/<run_name>")
    export_hf: bool = True
    gpu_power_w: float = Field(700.0, ge=0, description="average draw per GPU, for the energy estimate")
    cpu_core_power_w: float = Field(10.0, ge=0, description="average draw per CPU core, when no GPU is used")
    carbon_intensity_g_per_kwh: float = Field(400.0, ge=0)

    @field_validator("run_name")
    @classmethod
    def _run_name_is_one_segment(cls, value: str | None) -> str | None:
        if value is not None:
            names.segment(value, "run_name")
            if len(value) > 63:
                raise ValueError(f"run_name: {value!r} is longer than 63 characters")
        return value

    @field_validator("dataset_version")
    @classmethod
    def _version_id(cls, value: str) -> str:
        return names.version_id(value, "dataset_version")

    @field_validator("dataset_uri", "tokenizer_uri", "tokens_uri", "checkpoint_uri", "output_uri", "runs_dir")
    @classmethod
    def _location(cls, value: str | None, info) -> str | None:
        return None if value is None else names.storage_uri(value, info.field_name)

    @field_validator("trainer_overrides")
    @classmethod
    def _overrides_leave_the_flow_its_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        """The flow sets these keys itself and relies on them (where heartbeats and checkpoints
        are, when the run is finished, what a restart changes): an override would make the
        watcher blind or a finished run never recognised, so it is refused, naming the field."""
        for key in value:
            # the key itself, a parent of an owned key ("train"), or inside an owned subtree ("data.x")
            owner = next((use for owned, use in FLOW_OWNED_TRAINER_KEYS.items() if f"{owned}.".startswith(f"{key}.") or key.startswith(f"{owned}.")), None)
            if owner is not None:
                raise ValueError(f"trainer_overrides: {key!r} is set by the flow; {owner}")
        return value

    @field_validator("model_preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        from model.presets import PRESETS

        if value not in PRESETS:
            raise ValueError(f"unknown model preset {value!r}; choose one of {sorted(PRESETS)}")
        return value

    @model_validator(mode="after")
    def _default_run_name(self) -> "TrainParameters":
        """One run per dataset version unless named otherwise: re-running resumes that run."""
        if self.run_name is None:
            if self.dataset_version == "latest":
                raise ValueError("give run_name when training on the 'latest' version (a run name must not change meaning)")
            dataset = re.sub(r"[^A-Za-z0-9._-]+", "-", basename(self.dataset_uri)).strip("-.") or "dataset"
            self.run_name = f"{dataset}-{self.dataset_version}"[:63].rstrip("-.")
        return self

    @property
    def run_dir(self) -> Path:
        runs = Path(self.runs_dir or tokenmill_home() / "runs").resolve()
        run_dir = (runs / self.run_name).resolve()
        if run_dir.parent != runs:  # the validators make this impossible; a path is checked where it is made
            raise names.InvalidName(f"run_name: {self.run_name!r} leads outside {runs}")
        return run_dir

    @property
    def outputs_uri(self) -> str:
        return self.output_uri or join(data_root(), "runs", self.run_name)

    @property
    def checkpoints_uri(self) -> str:
        return self.checkpoint_uri or str(self.run_dir / "checkpoints")

    @property
    def world_size(self) -> int:
        return self.resources.nodes * self.resources.procs_per_node


# -- tokens --------------------------------------------------------------------------------


@task(cache_policy=NO_CACHE)
def prepare_tokenizer(params: TrainParameters, version: str) -> str:
    """The tokenizer to use: the given one, or one trained from this dataset version (kept
    next to the dataset and reused by every later run on the same version)."""
    store = ObjectStore()
    if params.tokenizer_uri:
        if not store.exists(params.tokenizer_uri):
            raise FileNotFoundError(f"tokenizer not found: {params.tokenizer_uri}")
        return params.tokenizer_uri
    uri = join(params.dataset_uri, "tokenizers", f"{version}-bpe{params.vocab_size}", "tokenizer.json")
    if store.exists(uri):
        get_run_logger().info("tokenizer %s already trained", uri)
        return uri
    from model.tokenizer import train_tokenizer

    return train_tokenizer(params.dataset_uri, version, uri, params.vocab_size, store=store, max_docs=params.tokenizer_max_docs)


@task(cache_policy=NO_CACHE)
def plan_tokens(params: TrainParameters, version: str, tokenizer_uri: str) -> dict:
    from pipeline.tokenize import plan_tokenization

    out_uri = params.tokens_uri or join(params.dataset_uri, "tokens")
    return plan_tokenization(params.dataset_uri, version, tokenizer_uri, out_uri, params.seq_len, params.val_fraction, rows_per_group=params.rows_per_group)


@task(cache_policy=NO_CACHE, task_run_name="tokenize-{shard[unit]}")
def tokenize_shard(plan: dict, shard: dict) -> dict:
    """One input shard → its train and val token units (idempotent: committed units are kept)."""
    from pipeline.tokenize import tokenize_shard as tokenize_one

    return tokenize_one(plan, shard)


@task(cache_policy=NO_CACHE)
def seal_tokens(plan: dict, counts: list[dict]) -> dict:
    from pipeline.tokenize import seal_tokens as seal

    tokens = seal(plan, counts)
    get_run_logger().info("token dataset %s: %s", tokens["uri"], {s: c["tokens"] for s, c in tokens["splits"].items()})
    return tokens


def tokenize(params: TrainParameters, version: str, tokenizer_uri: str) -> dict:
    """Token shards for the version: one task per input shard, `tokenize_workers` at a time
    (the tokenizer's Rust core releases the GIL), then one seal."""
    plan = plan_tokens(params, version, tokenizer_uri)
    with ThreadPoolTaskRunner(max_workers=params.tokenize_workers) as runner:
        futures = [runner.submit(tokenize_shard, {"plan": plan, "shard": shard}) for shard in plan["shards"]]
        counts = [f.result() for f in futures]
    return seal_tokens(plan, counts)


# -- jobs ----------------------------------------------------------------------------------


def trainer_config(params: TrainParameters, tokens: dict) -> dict:
    """The trainer's YAML config (keys: model/configs/README.md)."""
    config: dict[str, Any] = {
        "run_dir": str(params.run_dir),
        "model": {"preset": params.model_preset},
        "data": {"dataset": tokens["dataset"], "version": tokens["version"]},
        "train": {
            "steps": params.steps,
            "micro_batch_size": params.micro_batch_size,
            "grad_accum": params.grad_accum,
            "lr": params.lr,
            "warmup_steps": params.warmup_steps,
            "seed": params.seed,
        },
        "checkpoint": {"uri": params.checkpoint_uri, "every": params.checkpoint_every},
        "eval": {"every": params.eval_every},
    }
    if params.ds_config:
        config["deepspeed"] = params.ds_config
    for key, value in params.trainer_overrides.items():
        node = config
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config


def job_spec(params: TrainParameters, config_path: Path, attempt: int, overrides: dict[str, Any]) -> JobSpec:
    """`overrides`: trainer keys for this attempt (the first attempt's fault injection, a
    rollback's data skip and learning-rate scale). --resume without a checkpoint starts at 0."""
    command = ["-m", "model.train", "--config", str(config_path), "--resume"]
    for key, value in overrides.items():
        command += ["--set", f"{key}={json.dumps(value)}"]
    env = {**StorageSettings.from_env().as_env(), "PYTHONUNBUFFERED": "1"}
    if not params.resources.gpus_per_node:
        env["DS_ACCELERATOR"] = "cpu"
    r = params.resources
    return JobSpec(
        name=f"{params.run_name}-a{attempt}",
        command=command,
        run_dir=str(params.run_dir),
        env=env,
        nodes=r.nodes,
        procs_per_node=r.procs_per_node,
        cpus_per_node=r.cpus_per_node,
        gpus_per_node=r.gpus_per_node,
        memory_gb=r.memory_gb,
        time_limit_s=r.time_limit_s,
    )


def backend_for(params: TrainParameters, name: str | None = None) -> JobBackend:
    return make_backend(name or params.backend, **params.backend_options)


def record_job_time(run_dir: Path, job: dict) -> None:
    """Add (or update) a watched job's span in the run's ledger. Keyed by job id, so an
    adopted job is counted once, from its submission."""
    ledger = _jobs_ledger(run_dir)
    ledger[job["handle"]["job_id"]] = {"attempt": job["attempt"], "submitted_at": job["submitted_at"], "ended_at": time.time()}
    write_json_atomic(run_dir / JOBS_LEDGER, ledger)


def run_job_time(run_dir: Path) -> float:
    """Seconds the run's jobs held their devices, over every flow run that drove it."""
    return sum(max(0.0, j["ended_at"] - j["submitted_at"]) for j in _jobs_ledger(run_dir).values())


def _jobs_ledger(run_dir: Path) -> dict:
    path = run_dir / JOBS_LEDGER
    return json.loads(path.read_text()) if path.exists() else {}


def clear_attempt_signals(run_dir: Path) -> None:
    """Before a new attempt: no record or heartbeat of an earlier one may be taken for its own."""
    for name in (COMPLETION_FILE, STOPPED_FILE):
        (run_dir / name).unlink(missing_ok=True)
    for folder in (HEARTBEAT_DIR, FAILURES_DIR):
        for path in (run_dir / folder).glob("rank*"):
            path.unlink(missing_ok=True)


@task(cache_policy=NO_CACHE)
def submit(params: TrainParameters, config_path: Path, attempt: int, overrides: dict[str, Any]) -> dict:
    run_dir = params.run_dir
    clear_attempt_signals(run_dir)
    submitted_at = time.time()
    handle = backend_for(params).submit(job_spec(params, config_path, attempt, overrides))
    job = {"handle": handle.to_dict(), "attempt": attempt, "submitted_at": submitted_at, "flow_run_id": _flow_run_id()}
    (run_dir / JOB_FILE).write_text(json.dumps(job))
    get_run_logger().info("attempt %d: submitted %s job %s%s", attempt, handle.backend, handle.job_id, f" with {overrides}" if overrides else "")
    return job


def _flow_run_id() -> str | None:
    try:
        return str(get_run_context().flow_run.id)
    except Exception:  # outside a flow run (a test driving the task function)
        return None


def recorded_job(params: TrainParameters) -> dict | None:
    job_file = params.run_dir / JOB_FILE
    try:
        job = json.loads(job_file.read_text())
        JobHandle.from_dict(job["handle"])
        return job
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return None


def running_job(params: TrainParameters) -> dict | None:
    """The recorded job of this run if it is still queued or running (its flow process died)."""
    job = recorded_job(params)
    if job is None:
        return None
    handle = JobHandle.from_dict(job["handle"])
    return None if backend_for(params, handle.backend).status(handle).finished else job


@task(cache_policy=NO_CACHE)
def watch(params: TrainParameters, job: dict, metrics: MetricsLog, progress_id) -> tuple[Verdict, MetricsLog]:
    """Follow one attempt to its verdict: log lines into the run log, metrics into progress."""
    logger = get_run_logger()
    handle = JobHandle.from_dict(job["handle"])
    last_update = [0.0]

    def on_log_lines(lines: list[str]) -> None:
        for line in lines:
            logger.info("[%s] %s", handle.job_id, line)

    def on_metrics(records: list[dict]) -> None:
        if time.monotonic() - last_update[0] < 2.0 and metrics.last_step < params.steps:
            return  # the API need not hear about every step
        last_update[0] = time.monotonic()
        latest = metrics.latest() or {}
        update_progress_artifact(
            progress_id,
            min(100.0, 100.0 * metrics.last_step / params.steps),
            description=f"step {metrics.last_step}/{params.steps}, loss {latest.get('loss')}",
        )

    def on_pending(reason: str) -> None:
        logger.info("job %s waits to start: %s", handle.job_id, reason)
        update_progress_artifact(progress_id, 100.0 * min(metrics.last_step, params.steps) / params.steps, description=f"waiting to start: {reason}")

    watcher = AttemptWatcher(
        backend_for(params, handle.backend),
        handle,
        world_size=params.world_size,
        metrics=metrics,
        stall_timeout_s=params.stall_timeout_s,
        startup_timeout_s=params.startup_timeout_s,
        queue_timeout_s=params.queue_timeout_s,
        phase_timeout_s=params.phase_timeout_s,
        on_log_lines=on_log_lines,
        on_metrics=on_metrics,
        on_pending=on_pending,
        on_unavailable=logger.warning,
        since=job["submitted_at"],
    )
    verdict = watcher.run(params.poll_s)
    logger.log(20 if verdict.ok else 40, "job %s: %s (%s)", handle.job_id, verdict.outcome, verdict.reason)
    return verdict, metrics


def cancel_job(params: TrainParameters, job_id: str | None = None) -> str | None:
    """Cancel the attempt recorded in the run directory, if any (idempotent), and only if it
    is `job_id` when that is given (the job this flow watched, not one a later driver of the
    run submitted). Returns the backend's note when the job is not gone yet (the scheduler
    finishes it)."""
    job = recorded_job(params)
    if job is None or (job_id is not None and job["handle"]["job_id"] != job_id):
        return None
    handle = JobHandle.from_dict(job["handle"])
    note = backend_for(params, handle.backend).cancel(handle)
    (params.run_dir / JOB_FILE).unlink(missing_ok=True)
    return note


def cancel_job_hook(flow, flow_run, state) -> None:
    """on_cancellation/on_crashed: the flow process may be gone, the job must not outlive it."""
    raw = (flow_run.parameters or {}).get("params")
    if raw is not None:
        cancel_job(TrainParameters.model_validate(raw))


@task(cache_policy=NO_CACHE)
def export_model(params: TrainParameters, checkpoint: str) -> str:
    """Hugging Face Llama export of the final checkpoint, next to the run's other outputs
    (kept when an earlier run of the flow already exported this very checkpoint)."""
    out = params.run_dir / "hf"
    try:
        if json.loads((out / "tokenmill.json").read_text()).get("source_checkpoint") == checkpoint:
            return str(out)
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    result = subprocess.run(
        [sys.executable, "-m", "model.export", "--checkpoint", checkpoint, "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, **StorageSettings.from_env().as_env()},
    )
    if result.returncode != 0:
        raise RuntimeError(f"model export failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return str(out)


# -- restart policy ------------------------------------------------------------------------


def checkpoint_meta(store: ObjectStore, checkpoint: str | None) -> dict | None:
    if not checkpoint:
        return None
    uri = join(checkpoint, "tokenmill.json")
    return json.loads(store.get_bytes(uri)) if store.exists(uri) else None


def finished_run(params: TrainParameters, tokens: dict) -> dict | None:
    """The completion record of this run if it already trained all its steps on these tokens."""
    try:
        completion = json.loads((params.run_dir / COMPLETION_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    meta = checkpoint_meta(ObjectStore(), completion.get("checkpoint"))
    same = meta is not None and meta.get("data") == tokens["uri"] and meta.get("tokenizer") == tokens["tokenizer"]
    return completion if completion.get("step") == params.steps and same else None


def checkpoint_step(params: TrainParameters) -> int:
    """The step of the checkpoint a new attempt would resume from (0: none)."""
    from model.checkpoint import CheckpointLocation, step_of

    tag = CheckpointLocation(params.checkpoints_uri, params.run_dir / "checkpoint-staging").latest_tag()
    return (step_of(tag) or 0) if tag else 0


def roll_back(
    params: TrainParameters, verdict: Verdict, lr_scale: float, previous: tuple[int, int] | None
) -> tuple[dict[str, Any], tuple[int, int], str]:
    """After a divergence: point `latest` at the newest complete checkpoint before the
    trouble began, and return the next attempt's overrides, (rollback step, detection step)
    for the next call, and a sentence for the log. `previous` is the last rollback's pair:
    when the trouble begins again before the run got past the step where it last diverged,
    the rollback point itself is suspect and the run goes back further; a divergence after
    that step is new trouble, and only its own start counts."""
    from model.checkpoint import CheckpointLocation, step_of

    location = CheckpointLocation(params.checkpoints_uri, params.run_dir / "checkpoint-staging")
    since = int(verdict.details.get("since_step") or verdict.details.get("step") or 1)
    detected = int(verdict.details.get("step") or since)
    repeated = previous is not None and since <= previous[1]
    limit = min(since, previous[0]) if repeated else since
    complete = [t for t in location.tags() if step_of(t) < limit and location.incomplete_reason(t) is None]
    tag = complete[-1] if complete else None
    location.set_latest(tag)
    rollback_step = step_of(tag) if tag else 0
    overrides: dict[str, Any] = {"train.lr_scale": lr_scale * params.divergence_lr_factor}
    if params.divergence_skip_data:
        overrides["data.skip_steps"] = max(0, detected - rollback_step)
    where = f"checkpoint {tag}" if tag else "step 0 (no complete checkpoint before it)"
    return overrides, (rollback_step, detected), (
        f"diverged at step {detected} (trouble since step {since}): rolling back to {where}, "
        f"learning rate x{overrides['train.lr_scale']:g}"
        + (f", skipping the data of {overrides['data.skip_steps']} step(s)" if params.divergence_skip_data else "")
    )


# -- the flow ------------------------------------------------------------------------------


@flow(name="train", on_cancellation=[cancel_job_hook], on_crashed=[cancel_job_hook])
def train(params: TrainParameters) -> dict:
    logger = get_run_logger()
    run_dir = params.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    store = ObjectStore()
    store.check(params.dataset_uri)
    version = params.dataset_version
    if version == "latest":
        version = names.segment(latest_version(params.dataset_uri, store).version, "latest version of the dataset")
    record_training_run(params.dataset_uri, version, params.run_name, params.outputs_uri, store)  # for `tokenmill lineage`
    tokenizer_uri = prepare_tokenizer(params, version)
    tokens = tokenize(params, version, tokenizer_uri)
    # One flow run drives a run at a time (a duplicate "dataset ready" event, a manual re-run
    # beside a live one): a second would submit its own job into the same checkpoints, or
    # cancel the first one's. A crashed driver's lease expires after its TTL, so the re-run
    # that adopts its job waits that long at most.
    with lease.holding(params.outputs_uri, run_driver(), wait_s=lease_ttl_s() + 2 * lease.POLL_S, what=f"training run {params.run_name}") as held:
        config_path = run_dir / "config.yaml"
        config_path.write_text(yaml.safe_dump(trainer_config(params, tokens), sort_keys=False))
        metrics = MetricsLog(run_dir / "metrics.jsonl")
        metrics.read_new()  # what earlier runs of this run name logged: progress continues from it
        job = running_job(params)
        completion = None if job else finished_run(params, tokens)
        restarts: list[dict] = []
        if completion is not None:
            logger.info("run %s already finished at step %s: reporting it", params.run_name, completion["step"])
        else:
            verdict = run_attempts(params, config_path, metrics, job, restarts, held.check)
            completion = verdict.completion or {}
        summary = summarize(params, metrics, completion, run_job_time(run_dir))  # a re-run of a finished run adds nothing
        hf_dir = export_model(params, completion["checkpoint"]) if params.export_hf and completion.get("checkpoint") else None
        held.check()
        locations = publish(params, summary, metrics, completion, hf_dir, restarts)
    return {**locations, "run_dir": str(run_dir), "summary": summary, "restarts": restarts, "tokens": tokens}


def run_driver() -> str:
    """Who drives the run: the flow run (its retries are the same driver), else this process."""
    context = get_run_context()
    flow_run = getattr(context, "flow_run", None)
    return f"flow run {flow_run.id}" if flow_run is not None else lease.default_holder()


def run_attempts(
    params: TrainParameters, config_path: Path, metrics: MetricsLog, adopted: dict | None, restarts: list[dict], still_driving: Callable[[], None]
) -> Verdict:
    """Submit (or adopt), watch, and restart per the policy until the run completes; raises
    when it cannot. `still_driving` raises when this flow no longer holds the run's lease:
    checked before each submission."""
    logger = get_run_logger()
    progress_id = create_progress_artifact(
        100.0 * min(metrics.last_step, params.steps) / params.steps, description=f"training {params.run_name}"
    )
    failures = 0
    lr_scale, last_rollback = 1.0, None  # (rollback step, detection step) of the last divergence
    attempt = adopted["attempt"] if adopted else 0
    overrides: dict[str, Any] = {} if adopted else dict(params.first_attempt_overrides)
    job = adopted
    if adopted:
        logger.warning("adopting job %s of run %s (attempt %d, submitted by flow run %s): it was still running",
                       adopted["handle"]["job_id"], params.run_name, attempt, adopted.get("flow_run_id"))  # fmt: skip
    try:
        while True:
            start_step = checkpoint_step(params)
            if job is None:
                still_driving()
                job = submit(params, config_path, attempt, overrides)
            verdict, metrics = watch(params, job, metrics, progress_id)
            record_job_time(params.run_dir, job)
            note = cancel_job(params, job["handle"]["job_id"])  # also after a failure: sweeps up ranks a dying launcher left behind
            if note:
                logger.warning(note)
            if verdict.ok:
                return verdict
            restarts.append(
                {
                    "attempt": attempt,
                    "job": job["handle"]["job_id"],
                    "outcome": verdict.outcome,
                    "reason": verdict.reason,
                    "exit_code": verdict.state.exit_code if verdict.state else None,
                    "last_step": metrics.last_step,
                    "detected_after_s": round(time.time() - job["submitted_at"], 1),
                    "at": time.time(),
                }
            )
            create_table_artifact(restarts, key=artifact_key(params.run_name, "restarts"), description="restarts so far")
            progressed = checkpoint_step(params) > start_step
            repeated = len(restarts) > 1 and restarts[-2]["reason"] == verdict.reason and not progressed
            if verdict.will_recur or (verdict.outcome == "failed" and repeated):
                raise RuntimeError(f"training {params.run_name}: {verdict.outcome}: {verdict.reason} (not retried: it would fail the same way)")
            if not (verdict.outcome == "interrupted" and progressed):
                failures += 1
            if failures > params.max_restarts:
                raise RuntimeError(f"training {params.run_name} failed in {len(restarts)} attempt(s); last: {verdict.outcome}: {verdict.reason}")
            attempt, job = attempt + 1, None
            overrides = {"train.lr_scale": lr_scale} if lr_scale != 1.0 else {}
            if verdict.outcome == "diverged":
                overrides, last_rollback, message = roll_back(params, verdict, lr_scale, last_rollback)
                lr_scale = overrides["train.lr_scale"]
                logger.warning(message)
            elif verdict.outcome == "interrupted":
                logger.info("continuing in a new job from the checkpoint at step %d", checkpoint_step(params))
            else:
                logger.warning("restarting from the latest checkpoint (failure %d of at most %d)", failures, params.max_restarts)
    finally:
        note = cancel_job(params, job["handle"]["job_id"]) if job else None  # a flow that fails or is cancelled leaves no job behind
        if note:
            logger.warning(note)


# -- triggering ----------------------------------------------------------------------------


def dataset_ready_trigger(dataset_uri: str, params: dict[str, Any] | None = None) -> DeploymentEventTrigger:
    """A deployment trigger that starts `train` when `tokenmill.dataset.ready` fires for
    `dataset_uri`, on the version that event announces. `params` fills in the rest of
    TrainParameters; without a run_name each version gets its own run, `<dataset>-<version>`)."""
    base = {
        **(params or {}),
        "dataset_uri": "{{ event.resource['tokenmill.dataset.uri'] }}",
        "dataset_version": "{{ event.resource['tokenmill.dataset.version'] }}",
    }
    return DeploymentEventTrigger(
        name=f"train on {dataset_uri}",
        expect={DATASET_READY_EVENT},
        match={"tokenmill.dataset.uri": dataset_uri},
        parameters={"params": base},
    )

