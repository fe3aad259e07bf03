"""The `train` flow: tokenize a dataset version (once), submit a DeepSpeed job to a backend
(local, Slurm, Kubernetes), watch it, restart it from its latest checkpoint when it fails,
stalls or diverges, then export the model and report.

One run name is one run directory (`<runs_dir>/<run_name>`): re-running a flow with the same
name resumes from that run's checkpoint instead of starting over. The run directory must be
reachable from the flow and from every rank (shared filesystem on Slurm, a shared volume on
Kubernetes): metrics, heartbeats, checkpoints and the completion record are read from there.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import DeploymentEventTrigger
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from flows.watch import AttemptWatcher, MetricsLog, Verdict
from infra.backends import JobBackend, JobHandle, JobSpec, make_backend
from pipeline.dataset import latest_version
from pipeline.settings import StorageSettings, data_root, tokenmill_home
from pipeline.storage import ObjectStore, basename, join

JOB_FILE = "job.json"  # the running attempt's handle, for the cancellation hook
DATASET_READY_EVENT = "tokenmill.dataset.ready"


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nodes: int = Field(1, ge=1)
    procs_per_node: int = Field(2, ge=1, description="ranks per node (GPUs per node on GPU machines)")
    cpus_per_node: int | None = Field(None, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    memory_gb: float | None = Field(None, gt=0)
    time_limit_s: int | None = Field(None, gt=0)


class TrainParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", description="default: <dataset name>-<version>"
    )
    dataset_uri: str = Field(description="a corpus dataset (s3:// URI or local path)")
    dataset_version: str = Field("latest", description="a sealed version id, or 'latest'")
    tokenizer_uri: str | None = Field(None, description="an existing tokenizer.json; None trains one from the dataset")
    vocab_size: int = Field(8192, ge=258)
    tokenizer_max_docs: int | None = Field(50_000, ge=1)
    seq_len: int = Field(256, ge=8)
    val_fraction: float = Field(0.02, ge=0.0, lt=1.0)
    tokens_uri: str | None = Field(None, description="where token shards go; default <dataset_uri>/tokens")

    model_preset: str = "tiny"
    ds_config: str | None = Field(None, description="DeepSpeed config JSON path; None = the trainer's ZeRO-2 default")
    steps: int = Field(100, ge=1)
    micro_batch_size: int = Field(8, ge=1)
    lr: float = Field(3e-4, gt=0)
    warmup_steps: int = Field(10, ge=0)
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
    max_restarts: int = Field(3, ge=0)
    stall_timeout_s: float = Field(300.0, gt=0, description="a running job with no heartbeat for this long is stalled")
    startup_timeout_s: float = Field(900.0, gt=0, description="time for every rank's first heartbeat")
    poll_s: float = Field(2.0, gt=0)

    runs_dir: str | None = Field(None, description="local/shared folder for run directories; default $TOKENMILL_HOME/runs")
    output_uri: str | None = Field(None, description="where run outputs are uploaded; default <data root>/runs/<run_name>")
    export_hf: bool = True
    gpu_power_w: float = Field(700.0, ge=0, description="average draw per GPU, for the energy estimate")
    cpu_core_power_w: float = Field(10.0, ge=0, description="average draw per CPU core, when no GPU is used")
    carbon_intensity_g_per_kwh: float = Field(400.0, ge=0)

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
            self.run_name = f"{dataset}-{self.dataset_version}"[:63]
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir or tokenmill_home() / "runs").resolve() / self.run_name

    @property
    def outputs_uri(self) -> str:
        return self.output_uri or join(data_root(), "runs", self.run_name)


# -- tasks ---------------------------------------------------------------------------------


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
def tokenize(params: TrainParameters, version: str, tokenizer_uri: str) -> dict:
    """Token shards for the version (idempotent: a finished token version is found and reused)."""
    from pipeline.tokenize import tokenize_dataset

    out_uri = params.tokens_uri or join(params.dataset_uri, "tokens")
    tokens = tokenize_dataset(params.dataset_uri, version, tokenizer_uri, out_uri, params.seq_len, params.val_fraction)
    get_run_logger().info("token dataset %s: %s", tokens["uri"], {s: c["tokens"] for s, c in tokens["splits"].items()})
    return tokens


def trainer_config(params: TrainParameters, tokens: dict) -> dict:
    """The trainer's YAML config (keys: model/configs/README.md)."""
    config: dict[str, Any] = {
        "run_dir": str(params.run_dir),
        "model": {"preset": params.model_preset},
        "data": {"dataset": tokens["dataset"], "version": tokens["version"]},
        "train": {
            "steps": params.steps,
            "micro_batch_size": params.micro_batch_size,
            "lr": params.lr,
            "warmup_steps": params.warmup_steps,
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


def job_spec(params: TrainParameters, config_path: Path, attempt: int) -> JobSpec:
    command = ["-m", "model.train", "--config", str(config_path), "--resume"]  # --resume without a checkpoint starts at step 0
    if attempt == 0:
        for key, value in params.first_attempt_overrides.items():
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


def backend_for(params: TrainParameters) -> JobBackend:
    return make_backend(params.backend, **params.backend_options)


@task(cache_policy=NO_CACHE)
def submit(params: TrainParameters, config_path: Path, attempt: int) -> JobHandle:
    run_dir = params.run_dir
    (run_dir / "COMPLETED.json").unlink(missing_ok=True)
    handle = backend_for(params).submit(job_spec(params, config_path, attempt))
    (run_dir / JOB_FILE).write_text(json.dumps(handle.to_dict()))
    get_run_logger().info("attempt %d: submitted %s job %s", attempt, handle.backend, handle.job_id)
    return handle


@task(cache_policy=NO_CACHE)
def watch(params: TrainParameters, handle: JobHandle, metrics: MetricsLog, progress_id) -> tuple[Verdict, MetricsLog]:
    """Follow one attempt to its verdict: log lines into the run log, metrics into progress."""
    logger = get_run_logger()
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

    watcher = AttemptWatcher(
        backend_for(params),
        handle,
        world_size=params.resources.nodes * params.resources.procs_per_node,
        metrics=metrics,
        stall_timeout_s=params.stall_timeout_s,
        startup_timeout_s=params.startup_timeout_s,
        on_log_lines=on_log_lines,
        on_metrics=on_metrics,
    )
    verdict = watcher.run(params.poll_s)
    logger.log(20 if verdict.ok else 40, "job %s: %s (%s)", handle.job_id, verdict.outcome, verdict.reason)
    return verdict, metrics


def cancel_job(params: TrainParameters) -> None:
    """Cancel the attempt recorded in the run directory, if any (idempotent)."""
    job_file = params.run_dir / JOB_FILE
    if not job_file.exists():
        return
    handle = JobHandle.from_dict(json.loads(job_file.read_text()))
    make_backend(handle.backend, **params.backend_options).cancel(handle)
    job_file.unlink(missing_ok=True)


def cancel_job_hook(flow, flow_run, state) -> None:
    """on_cancellation/on_crashed: the flow process may be gone, the job must not outlive it."""
    raw = (flow_run.parameters or {}).get("params")
    if raw is not None:
        cancel_job(TrainParameters.model_validate(raw))


@task(cache_policy=NO_CACHE)
def export_model(params: TrainParameters, checkpoint: str) -> str:
    """Hugging Face Llama export of the final checkpoint, next to the run's other outputs."""
    out = params.run_dir / "hf"
    result = subprocess.run(
        [sys.executable, "-m", "model.export", "--checkpoint", checkpoint, "--out", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, **StorageSettings.from_env().as_env()},
    )
    if result.returncode != 0:
        raise RuntimeError(f"model export failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return str(out)


# -- report --------------------------------------------------------------------------------


def mean(values: list[float]) -> float | None:
    values = [v for v in values if isinstance(v, (int, float))]
    return sum(values) / len(values) if values else None


def summarize(params: TrainParameters, metrics: MetricsLog, completion: dict, wall_s: float) -> dict:
    r = params.resources
    devices = r.nodes * (r.gpus_per_node or r.procs_per_node)
    watts = r.nodes * (
        r.gpus_per_node * params.gpu_power_w
        if r.gpus_per_node
        else (r.cpus_per_node or r.procs_per_node) * params.cpu_core_power_w
    )
    energy_kwh = watts * wall_s / 3600 / 1000
    steady = [m for step, m in sorted(metrics.train.items()) if step > 1]  # step 1 carries start-up costs
    return {
        "final_train_loss": completion.get("final_loss"),
        "final_val_loss": completion.get("val_loss"),
        "tokens_seen": completion.get("tokens_seen"),
        "tokens_per_s": mean([m.get("tokens_per_s") for m in steady]),
        "mfu": mean([m.get("mfu") for m in steady]),
        "steps": completion.get("step"),
        "wall_s": wall_s,
        "trainer_wall_s": completion.get("wall_s"),
        "device_kind": "GPU" if r.gpus_per_node else "CPU rank",
        "device_hours": devices * wall_s / 3600,
        "energy_kwh": energy_kwh,
        "co2_kg": energy_kwh * params.carbon_intensity_g_per_kwh / 1000,
    }


def plot_loss_curve(metrics: MetricsLog, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    train = sorted(metrics.train.items())
    ax.plot([s for s, _ in train], [m.get("loss") for _, m in train], label="train loss")
    if metrics.val:
        val = sorted(metrics.val.items())
        ax.plot([s for s, _ in val], [m.get("val_loss") for _, m in val], "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(value: Any, spec: str = ".4g") -> str:
    return "n/a" if value is None else format(value, spec) if isinstance(value, (int, float)) else str(value)


def report_markdown(params: TrainParameters, summary: dict, locations: dict, restarts: list[dict]) -> str:
    s = summary
    lines = [
        f"# Training run `{params.run_name}`",
        "",
        f"Model preset **{params.model_preset}**, {params.steps} steps, backend **{params.backend}** "
        f"({params.resources.nodes} node(s) × {params.resources.procs_per_node} rank(s)), dataset `{params.dataset_uri}`.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| final train loss | {_fmt(s['final_train_loss'])} |",
        f"| final validation loss | {_fmt(s['final_val_loss'])} |",
        f"| tokens seen | {_fmt(s['tokens_seen'], ',')} |",
        f"| tokens/s (mean) | {_fmt(s['tokens_per_s'], ',.0f')} |",
        f"| MFU (mean) | {_fmt(s['mfu'], '.2%') if s['mfu'] is not None else 'n/a (no peak FLOPs known for this device)'} |",
        f"| wall time | {_fmt(s['wall_s'], '.1f')} s (trainer's last attempt {_fmt(s['trainer_wall_s'], '.1f')} s) |",
        f"| device-hours | {_fmt(s['device_hours'], '.4f')} ({s['device_kind']}) |",
        f"| energy (estimate) | {_fmt(s['energy_kwh'], '.4f')} kWh |",
        f"| CO2 (estimate) | {_fmt(s['co2_kg'], '.4f')} kg at {params.carbon_intensity_g_per_kwh:g} gCO2/kWh |",
        f"| restarts | {len(restarts)} |",
        "",
        "Energy assumes "
        + (
            f"{params.gpu_power_w:g} W per GPU"
            if params.resources.gpus_per_node
            else f"{params.cpu_core_power_w:g} W per CPU core"
        )
        + " for the whole wall time.",
        "",
        "## Where things are",
        "",
        *(f"- {name}: `{where}`" for name, where in locations.items() if where),
    ]
    if restarts:
        lines += ["", "## Restarts", "", "| attempt | outcome | reason | last step |", "|---|---|---|---|"]
        lines += [f"| {r['attempt']} | {r['outcome']} | {r['reason'].replace('|', '/')} | {r['last_step']} |" for r in restarts]
    return "\n".join(lines) + "\n"


def loss_table(metrics: MetricsLog, max_rows: int = 50) -> list[dict]:
    steps = sorted(metrics.train)
    every = max(1, -(-len(steps) // max_rows))
    picked = steps[::every] + ([steps[-1]] if steps and steps[-1] not in steps[::every] else [])
    return [
        {
            "step": s,
            "loss": metrics.train[s].get("loss"),
            "val_loss": (metrics.val.get(s) or {}).get("val_loss"),
            "lr": metrics.train[s].get("lr"),
            "tokens_per_s": metrics.train[s].get("tokens_per_s"),
        }
        for s in picked
    ]


def artifact_key(*parts: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


@task(cache_policy=NO_CACHE)
def publish(
    params: TrainParameters, summary: dict, metrics: MetricsLog, completion: dict, hf_dir: str | None, restarts: list[dict]
) -> dict:
    """Loss curve, report and outputs: written to the run directory and uploaded to object storage."""
    store = ObjectStore()
    run_dir, out_uri = params.run_dir, params.outputs_uri
    curve = plot_loss_curve(metrics, run_dir / "loss_curve.png")
    hf_uri = join(out_uri, "hf") if hf_dir else None
    locations = {
        "run directory": str(run_dir),
        "checkpoint": completion.get("checkpoint"),
        "exported Hugging Face model": hf_uri,
        "report": join(out_uri, "report.md"),
        "loss curve": join(out_uri, "loss_curve.png"),
        "metrics": join(out_uri, "metrics.jsonl"),
    }
    report = report_markdown(params, summary, locations, restarts)
    (run_dir / "report.md").write_text(report)
    (run_dir / "summary.json").write_text(
        json.dumps({"summary": summary, "locations": locations, "restarts": restarts}, indent=1)
    )
    for name in ("report.md", "summary.json", "loss_curve.png", "metrics.jsonl", "COMPLETED.json", "config.yaml"):
        if (run_dir / name).exists():
            store.upload_file(run_dir / name, join(out_uri, name))
    if hf_dir:
        for path in sorted(p for p in Path(hf_dir).rglob("*") if p.is_file()):
            store.upload_file(path, join(hf_uri, path.relative_to(hf_dir).as_posix()))
    create_markdown_artifact(
        report, key=artifact_key(params.run_name, "report"), description=f"training report for {params.run_name}"
    )
    create_table_artifact(loss_table(metrics), key=artifact_key(params.run_name, "loss"), description="loss by step")
    return {
        "report": locations["report"],
        "loss_curve": locations["loss curve"],
        "loss_curve_local": str(curve),
        "checkpoint": locations["checkpoint"],
        "hf_model": hf_uri,
        "outputs": out_uri,
    }


# -- the flow ------------------------------------------------------------------------------


@flow(name="train", on_cancellation=[cancel_job_hook], on_crashed=[cancel_job_hook])
def train(params: TrainParameters) -> dict:
    logger = get_run_logger()
    run_dir = params.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    store = ObjectStore()
    store.check(params.dataset_uri)
    version = latest_version(params.dataset_uri, store).version if params.dataset_version == "latest" else params.dataset_version
    tokenizer_uri = prepare_tokenizer(params, version)
    tokens = tokenize(params, version, tokenizer_uri)
    config_path = run_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(trainer_config(params, tokens), sort_keys=False))

    metrics = MetricsLog(run_dir / "metrics.jsonl")
    metrics.read_new()  # what earlier runs of this run name logged: progress continues from it
    progress_id = create_progress_artifact(
        100.0 * min(metrics.last_step, params.steps) / params.steps, description=f"training {params.run_name}"
    )
    restarts: list[dict] = []
    verdict: Verdict | None = None
    started = time.time()  # wall time and device-hours count from the first submission
    try:
        for attempt in range(params.max_restarts + 1):
            handle = submit(params, config_path, attempt)
            verdict, metrics = watch(params, handle, metrics, progress_id)
            # Also after a failure: sweeps up ranks a dying launcher left behind.
            cancel_job(params)
            if verdict.ok:
                break
            restarts.append(
                {
                    "attempt": attempt,
                    "job": handle.job_id,
                    "outcome": verdict.outcome,
                    "reason": verdict.reason,
                    "exit_code": verdict.state.exit_code if verdict.state else None,
                    "last_step": metrics.last_step,
                    "at": time.time(),
                }
            )
            create_table_artifact(restarts, key=artifact_key(params.run_name, "restarts"), description="restarts so far")
            if attempt < params.max_restarts:
                logger.warning("restarting from the latest checkpoint (restart %d of %d)", attempt + 1, params.max_restarts)
    finally:
        cancel_job(params)  # a flow that fails or is cancelled leaves no job behind
    if verdict is None or not verdict.ok:
        raise RuntimeError(
            f"training {params.run_name} failed in {len(restarts)} attempt(s); last: {verdict.reason if verdict else 'not started'}"
        )

    completion = verdict.completion or {}
    summary = summarize(params, metrics, completion, time.time() - started)
    hf_dir = export_model(params, completion["checkpoint"]) if params.export_hf and completion.get("checkpoint") else None
    locations = publish(params, summary, metrics, completion, hf_dir, restarts)
    return {**locations, "run_dir": str(run_dir), "summary": summary, "restarts": restarts, "tokens": tokens}


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
