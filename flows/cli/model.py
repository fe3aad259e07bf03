"""`tokenmill tokenizer train`, `tokenmill tokenize` and `tokenmill export`.

Heavy imports (tokenizers, torch, transformers) happen inside the commands, so that
`tokenmill --help` stays fast.
"""

from __future__ import annotations

import argparse
import json

from flows.cli import CommandError


def _resolve_version(dataset: str, version: str) -> str:
    from pipeline.dataset import latest_version

    return latest_version(dataset).version if version == "latest" else version


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from model.tokenizer import train_tokenizer

    version = _resolve_version(args.dataset, args.version)
    uri = train_tokenizer(args.dataset, version, args.out, args.vocab_size, max_docs=args.max_docs)
    print(uri)
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from pipeline.tokenize import tokenize_dataset

    version = _resolve_version(args.dataset, args.version)
    with Progress(transient=True) as bar:
        task = bar.add_task("tokenizing shards", total=None)
        result = tokenize_dataset(
            args.dataset, version, args.tokenizer, args.out, args.seq_len, args.val_fraction,
            rows_per_group=args.rows_per_group, progress=lambda done, total: bar.update(task, completed=done, total=total),
        )  # fmt: skip
    print(json.dumps(result, indent=1))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from model.export import export_hf

    try:
        print(export_hf(args.checkpoint, args.out, dtype=args.dtype))
    except FileNotFoundError as exc:
        raise CommandError(str(exc)) from exc
    return 0


def register(subparsers) -> None:
    tok = subparsers.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    train = tok_sub.add_parser("train", help="train on a dataset version's text and save tokenizer.json")
    train.add_argument("--dataset", required=True, help="dataset URI (s3://bucket/datasets/name or a local path)")
    train.add_argument("--version", default="latest", help="dataset version id (default: the latest sealed)")
    train.add_argument("--out", required=True, help="where to save: a .json URI or a folder")
    train.add_argument("--vocab-size", type=int, default=32000)
    train.add_argument("--max-docs", type=int, default=None, help="train on at most this many documents")
    train.set_defaults(func=cmd_tokenizer_train)

    tz = subparsers.add_parser("tokenize", help="pack a dataset version into token shards for training")
    tz.add_argument("--dataset", required=True)
    tz.add_argument("--version", default="latest")
    tz.add_argument("--tokenizer", required=True, help="tokenizer.json URI")
    tz.add_argument("--out", required=True, help="token dataset URI")
    tz.add_argument("--seq-len", type=int, default=1024)
    tz.add_argument("--val-fraction", type=float, default=0.01)
    tz.add_argument("--rows-per-group", type=int, default=None, help="sequences per Parquet row group (the unit of per-rank sharding)")
    tz.set_defaults(func=cmd_tokenize)

    ex = subparsers.add_parser("export", help="convert a training checkpoint to Hugging Face Llama format")
    ex.add_argument("--checkpoint", required=True, help="checkpoint root (with `latest`) or tag folder; local or s3://")
    ex.add_argument("--out", required=True)
    ex.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ex.set_defaults(func=cmd_export)
