"""`tokenmill train`: run the training flow (or, with several values for --lr, --batch or
--warmup, the sweep flow over their grid) and print where the outputs are."""

from __future__ import annotations

import argparse
import json

import yaml

from flows.cli import CommandError


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model on a dataset version (train flow; a sweep when given several values)")
    p.add_argument("dataset", help="dataset name or URI")
    p.add_argument("--version", default="latest", help="dataset version id (default: latest)")
    p.add_argument("--run-name", help="run name (default: <dataset>-<version>; required with --version latest)")
    p.add_argument("--preset", default="tiny", help="model preset (tiny, 125m, 350m, 1b)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, nargs="+", default=[3e-4])
    p.add_argument("--batch", type=int, nargs="+", default=[8], help="micro batch size per rank")
    p.add_argument("--warmup", type=int, nargs="+", default=[10], help="warmup steps")
    p.add_argument("--backend", choices=["local", "slurm", "kubernetes"], default="local")
    p.add_argument("--backend-options", default="{}", help='JSON, e.g. \'{"slurm_conf": "/etc/slurm/slurm.conf"}\'')
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--procs-per-node", type=int, default=2)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--max-restarts", type=int, default=3)
    p.add_argument("--params", help="YAML file with further TrainParameters fields (command-line flags win)")
    p.add_argument("--random-trials", type=int, help="sweep: sample this many grid points instead of the whole grid")
    p.set_defaults(func=cmd_train)


def train_parameters(args: argparse.Namespace) -> dict:
    """TrainParameters fields from the command line (the first value of each swept option)."""
    extra: dict = {}
    if args.params:
        try:
            with open(args.params) as fh:
                extra = yaml.safe_load(fh) or {}
        except OSError as exc:
            raise CommandError(f"cannot read --params: {exc}") from exc
        if not isinstance(extra, dict):
            raise CommandError(f"{args.params}: expected a mapping of TrainParameters fields")
    try:
        backend_options = json.loads(args.backend_options)
    except json.JSONDecodeError as exc:
        raise CommandError(f"--backend-options is not JSON: {exc}") from exc
    from pipeline.dataset import resolve_dataset_uri

    resources = {
        **extra.pop("resources", {}),
        "nodes": args.nodes,
        "procs_per_node": args.procs_per_node,
        "gpus_per_node": args.gpus_per_node,
    }
    fields = {
        **extra,
        "dataset_uri": resolve_dataset_uri(args.dataset),
        "dataset_version": args.version,
        "model_preset": args.preset,
        "steps": args.steps,
        "lr": args.lr[0],
        "micro_batch_size": args.batch[0],
        "warmup_steps": args.warmup[0],
        "backend": args.backend,
        "backend_options": backend_options,
        "resources": resources,
        "max_restarts": args.max_restarts,
    }
    if args.run_name:
        fields["run_name"] = args.run_name
    return fields


def cmd_train(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from flows.sweep import SweepParameters, sweep
    from flows.train import TrainParameters, train

    is_sweep = len(args.lr) > 1 or len(args.batch) > 1 or len(args.warmup) > 1 or args.random_trials
    try:
        params = TrainParameters(**train_parameters(args))
        if is_sweep:
            search = {"search": "random", "trials": args.random_trials} if args.random_trials else {}
            sweep_params = SweepParameters(
                base=params, lr=args.lr, micro_batch_size=args.batch, warmup_steps=args.warmup, **search
            )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CommandError(f"{'.'.join(str(p) for p in first['loc']) or 'parameters'}: {first['msg']}") from exc
    if is_sweep:
        result = sweep(params=sweep_params)
        print(json.dumps({"best": result["best"], "trials": result["trials"]}, indent=1, default=str))
        return 0
    result = train(params=params)
    print(f"run {params.run_name}: {len(result['restarts'])} restart(s)")
    for key in ("report", "loss_curve", "checkpoint", "hf_model", "run_dir"):
        print(f"  {key}: {result[key]}")
    return 0
