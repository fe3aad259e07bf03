"""The training run's report: summary figures, plots (loss, learning rate, tokens/s, MFU over
steps), the markdown report, and where everything is. Written to the run directory,
uploaded beside each other under the run's output URI, and shown in the Prefect UI."""

import json
import re
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.reporting import publish_images
from flows.watch import MetricsLog
from pipeline.storage import ObjectStore, join

# File name, title, y label, the metrics key per series (train records; "val:" = validation).
PLOTS = [
    ("loss_curve.png", "Loss", "cross-entropy (nats/token)", [("train loss", "loss"), ("validation loss", "val:val_loss")]),
    ("learning_rate.png", "Learning rate", "learning rate", [("learning rate", "lr")]),
    ("throughput.png", "Throughput", "tokens/s (all ranks)", [("tokens/s", "tokens_per_s")]),
    ("mfu.png", "Model FLOPs utilisation", "MFU", [("MFU", "mfu")]),
]


def mean(values: list[float]) -> float | None:
    values = [v for v in values if isinstance(v, (int, float))]
    return sum(values) / len(values) if values else None


def summarize(params, metrics: MetricsLog, completion: dict, wall_s: float) -> dict:
    """`wall_s`: how long the run's jobs held their devices (queue time included), all attempts."""
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


def _series(metrics: MetricsLog, key: str) -> tuple[list[int], list[float]]:
    records = metrics.val if key.startswith("val:") else metrics.train
    key = key.removeprefix("val:")
    points = [(s, m[key]) for s, m in sorted(records.items()) if isinstance(m.get(key), (int, float))]
    return [s for s, _ in points], [v for _, v in points]


def plot_training(metrics: MetricsLog, folder: Path) -> dict[str, Path]:
    """One PNG per plot in PLOTS that has data (MFU is null on CPUs): {title: path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    for filename, title, ylabel, series in PLOTS:
        data = [(label, *_series(metrics, key)) for label, key in series]
        if not any(steps for _, steps, _ in data):
            continue
        fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
        for label, steps, values in data:
            if steps:
                ax.plot(steps, values, "o-" if label.startswith("validation") else "-", label=label, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend()
        fig.tight_layout()
        fig.savefig(folder / filename)
        plt.close(fig)
        out[title] = folder / filename
    return out


def _fmt(value: Any, spec: str = ".4g") -> str:
    return "n/a" if value is None else format(value, spec) if isinstance(value, (int, float)) else str(value)


def report_markdown(params, summary: dict, locations: dict, restarts: list[dict], plots: dict[str, Path]) -> str:
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
        f"| job time | {_fmt(s['wall_s'], '.1f')} s, every attempt (trainer's last attempt {_fmt(s['trainer_wall_s'], '.1f')} s) |",
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
        + " for the whole job time.",
        "",
        "## Plots",
        "",
        *(f"![{title}]({path.name})" for title, path in plots.items()),
        "",
        "## Where things are",
        "",
        *(f"- {name}: `{where}`" for name, where in locations.items() if where),
    ]
    if restarts:
        lines += ["", "## Restarts", "", "| attempt | outcome | reason | last step | detected after |", "|---|---|---|---|---|"]
        lines += [
            f"| {r['attempt']} | {r['outcome']} | {r['reason'].replace('|', '/')} | {r['last_step']} | {r.get('detected_after_s', 'n/a')} s |"
            for r in restarts
        ]
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
            "mfu": metrics.train[s].get("mfu"),
        }
        for s in picked
    ]


def artifact_key(*parts: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


@task(cache_policy=NO_CACHE)
def publish(params, summary: dict, metrics: MetricsLog, completion: dict, hf_dir: str | None, restarts: list[dict]) -> dict:
    """Plots, report and outputs: written to the run directory and uploaded to object storage
    side by side (the report's image links are relative); the report with its plots and the
    loss table shown in the Prefect UI."""
    store = ObjectStore()
    run_dir, out_uri = params.run_dir, params.outputs_uri
    plots = plot_training(metrics, run_dir)
    hf_uri = join(out_uri, "hf") if hf_dir else None
    locations = {
        "run directory": str(run_dir),
        "checkpoint": completion.get("checkpoint"),
        "exported Hugging Face model": hf_uri,
        "report": join(out_uri, "report.md"),
        "plots": ", ".join(join(out_uri, p.name) for p in plots.values()) or None,
        "metrics": join(out_uri, "metrics.jsonl"),
    }
    report = report_markdown(params, summary, locations, restarts, plots)
    (run_dir / "report.md").write_text(report)
    (run_dir / "summary.json").write_text(
        json.dumps({"summary": summary, "locations": locations, "restarts": restarts}, indent=1)
    )
    uploads = ["report.md", "summary.json", "metrics.jsonl", "COMPLETED.json", "config.yaml", *(p.name for p in plots.values())]
    for name in uploads:
        if (run_dir / name).exists():
            store.upload_file(run_dir / name, join(out_uri, name))
    if hf_dir:
        for path in sorted(p for p in Path(hf_dir).rglob("*") if p.is_file()):
            store.upload_file(path, join(hf_uri, path.relative_to(hf_dir).as_posix()))
    images = {p.name: p.read_bytes() for p in plots.values()}  # the UI shows them inline
    publish_images(artifact_key(params.run_name, "report"), report, images, f"training report for {params.run_name}")
    create_table_artifact(loss_table(metrics), key=artifact_key(params.run_name, "loss"), description="loss by step")
    return {
        "report": locations["report"],
        "loss_curve": join(out_uri, "loss_curve.png") if "Loss" in plots else None,
        "plots": {title: join(out_uri, p.name) for title, p in plots.items()},
        "plots_local": {title: str(p) for title, p in plots.items()},
        "checkpoint": locations["checkpoint"],
        "hf_model": hf_uri,
        "outputs": out_uri,
    }
