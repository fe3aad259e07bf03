"""`tokenmill classifier train`: a supervised fastText classifier from labelled JSONL."""

from __future__ import annotations

import argparse

from flows.cli import CommandError


def register(subparsers) -> None:
    parser = subparsers.add_parser("classifier", help="train fastText document classifiers")
    sub = parser.add_subparsers(dest="classifier_command", required=True, metavar="ACTION")
    train = sub.add_parser("train", help="train, quantize and evaluate on a held-out split")
    train.add_argument("--input", required=True, help="labelled JSONL, optionally .gz")
    train.add_argument("--text-field", default="text")
    train.add_argument("--label-field", default="label")
    train.add_argument("--positive-label", default=None, help="the label whose probability is the score (default: true/1/yes/positive/hq)")
    train.add_argument("--output", required=True, help="model path, e.g. model.ftz (a .json record is written beside it)")
    train.add_argument("--quantize", action=argparse.BooleanOptionalAction, default=True, help="quantize (default) for a small model")
    train.add_argument("--holdout", type=float, default=0.1, help="fraction held out for precision/recall")
    train.add_argument("--epoch", type=int, default=5)
    train.add_argument("--lr", type=float, default=0.5)
    train.add_argument("--word-ngrams", type=int, default=2)
    train.add_argument("--dim", type=int, default=32)
    train.add_argument("--threshold", type=float, default=0.5, help="score at which the held-out figures count a positive")
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(func=run_train)


def run_train(args) -> int:
    from pipeline.classifier_train import train_classifier

    try:
        result = train_classifier(
            args.input, args.output, text_field=args.text_field, label_field=args.label_field,
            positive_label=args.positive_label, holdout=args.holdout, quantize=args.quantize, epoch=args.epoch,
            lr=args.lr, word_ngrams=args.word_ngrams, dim=args.dim, threshold=args.threshold, seed=args.seed,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    print(f"model: {args.output} ({'quantized' if result.quantized else 'not quantized'}), labels {result.labels}, "
          f"positive {result.positive_label!r}")
    print(f"rows: {result.train_rows} train, {result.holdout_rows} held out, {result.skipped_rows} skipped")
    if result.holdout_rows:
        auc = "n/a" if result.roc_auc is None else f"{result.roc_auc:.4f}"
        print(f"held out @ {result.threshold}: precision {result.precision:.4f} recall {result.recall:.4f} f1 {result.f1:.4f} "
              f"roc_auc {auc}")
    return 0
