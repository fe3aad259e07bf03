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
    p.add_argument("--version", help="dataset version id (default: latest)")
    p.add_argument("--run-name", help="run name (default: <dataset>-<version>; required with --version latest)")
    p.add_argument("--preset", help="model preset (tiny, 125m, 350m, 1b; default tiny)")
    p.add_argument("--steps", type=int, help="optimizer steps (default 100)")
    p.add_argument("--lr", type=float, nargs="+", help="peak learning rate (default 3e-4); several values: a sweep")
    p.add_argument("--batch", type=int, nargs="+", help="micro batch size per rank (default 8)")
    p.add_argument("--warmup", type=int, nargs="+", help="warmup steps (default 10)")
    p.add_argument("--backend", choices=["local", "slurm", "kubernetes"], help="default local")
    p.add_argument("--backend-options", help='JSON, e.g. \'{"slurm_conf": "/etc/slurm/slurm.conf"}\'')
    p.add_argument("--nodes", type=int)
    p.add_argument("--procs-per-node", type=int, help="ranks per node (default 2)")
    p.add_argument("--gpus-per-node", type=int)
    p.add_argument("--max-restarts", type=int)
    p.add_argument("--params", help="YAML file of TrainParameters fields; a flag given on the command line wins over it")
    p.add_argument("--random-trials", type=int, help="sweep: sample this many grid points instead of the whole grid")
    p.set_defaults(func=cmd_train)


# TrainParameters field ← command-line flag. A flag left out leaves the field to --params (or
# the field's default): only flags the user typed override the file.
FLAG_FIELDS = {
    "dataset_version": "version", "run_name": "run_name", "model_preset": "preset", "steps": "steps",
    "backend": "backend", "max_restarts": "max_restarts",
}  # fmt: skip
SWEPT_FLAGS = {"lr": "lr", "micro_batch_size": "batch", "warmup_steps": "warmup"}
RESOURCE_FLAGS = {"nodes": "nodes", "procs_per_node": "procs_per_node", "gpus_per_node": "gpus_per_node"}


def train_parameters(args: argparse.Namespace) -> dict:
    """TrainParameters fields: --params, then the flags given (the first value of each swept option)."""
    fields: dict = {}
    if args.params:
        try:
            with open(args.params) as fh:
                fields = yaml.safe_load(fh) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise CommandError(f"cannot read --params: {exc}") from exc
        if not isinstance(fields, dict):
            raise CommandError(f"{args.params}: expected a mapping of TrainParameters fields")
    from pipeline.dataset import resolve_dataset_uri

    fields["dataset_uri"] = resolve_dataset_uri(args.dataset)
    fields.update({name: getattr(args, flag) for name, flag in FLAG_FIELDS.items() if getattr(args, flag) is not None})
    fields.update({name: getattr(args, flag)[0] for name, flag in SWEPT_FLAGS.items() if getattr(args, flag)})
    given = {name: getattr(args, flag) for name, flag in RESOURCE_FLAGS.items() if getattr(args, flag) is not None}
    if given:
        fields["resources"] = {**(fields.get("resources") or {}), **given}
    if args.backend_options is not None:
        try:
            fields["backend_options"] = json.loads(args.backend_options)
        except json.JSONDecodeError as exc:
            raise CommandError(f"--backend-options is not JSON: {exc}") from exc
    return fields


def cmd_train(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from flows.cli import validation_message
    from flows.sweep import SweepParameters, sweep
    from flows.train import TrainParameters, train

    swept = {name: getattr(args, flag) for name, flag in SWEPT_FLAGS.items() if getattr(args, flag)}
    is_sweep = any(len(values) > 1 for values in swept.values()) or args.random_trials
    try:
        params = TrainParameters(**train_parameters(args))
        if is_sweep:
            search = {"search": "random", "trials": args.random_trials} if args.random_trials else {}
            grid = {name: swept.get(name) or [getattr(params, name)] for name in SWEPT_FLAGS}
            sweep_params = SweepParameters(base=params, **grid, **search)
    except (ValidationError, ValueError) as exc:
        raise CommandError(validation_message(exc) if isinstance(exc, ValidationError) else str(exc)) from exc
    if is_sweep:
        result = sweep(params=sweep_params)
        print(json.dumps({"best": result["best"], "trials": result["trials"]}, indent=1, default=str))
        return 0
    result = train(params=params)
    print(f"run {params.run_name}: {len(result['restarts'])} restart(s)")
    for key in ("report", "checkpoint", "hf_model", "run_dir"):
        print(f"  {key}: {result[key]}")
    for title, uri in result["plots"].items():
        print(f"  plot ({title.lower()}): {uri}")
    return 0
