"""Training supervised fastText classifiers from labelled JSONL (DCLM-style positive/negative
sets), with a held-out split for precision/recall, quantized for size.

Beside `model.ftz` a `model.ftz.json` sidecar records the positive label, the text
preparation and the held-out figures, so a filter applying the model prepares text the same
way and knows which label's probability is the score.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import multiprocessing
import os
import random
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa

from model.metrics import write_json_atomic
from pipeline.steps.text import fasttext_lines

MIN_ROWS_TO_QUANTIZE = 256  # fastText's product quantizer needs this many training rows
POSITIVE_NAMES = ("true", "1", "yes", "positive", "pos", "hq", "toxic")
TEXT_PREP = {"lowercase": True, "max_chars": 20_000}


@dataclass
class TrainResult:
    model_path: str  # the model's file name, next to this record
    positive_label: str
    labels: list[str]
    train_rows: int
    holdout_rows: int
    skipped_rows: int
    quantized: bool
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    roc_auc: float | None = None
    threshold: float = 0.5
    params: dict = field(default_factory=dict)
    text_prep: dict = field(default_factory=lambda: dict(TEXT_PREP))

    def as_dict(self) -> dict:
        return asdict(self)


def label_token(value) -> str:
    """A label value as a fastText label: booleans and numbers as lower-case text, spaces to '_'."""
    if isinstance(value, bool):
        value = "true" if value else "false"
    return str(value).strip().lower().replace(" ", "_")


def read_labelled(path: str | Path, text_field: str, label_field: str) -> tuple[list[str], list[str], int]:
    """(texts, labels, skipped): rows without the text or label field, or not JSON, are skipped and counted."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labelled data not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    texts, labels, skipped = [], [], 0
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            text, label = row.get(text_field) if isinstance(row, dict) else None, row.get(label_field) if isinstance(row, dict) else None
            if not isinstance(text, str) or not text.strip() or label is None:
                skipped += 1
                continue
            texts.append(text)
            labels.append(label_token(label))
    if not texts:
        raise ValueError(f"no usable rows in {path} (fields {text_field!r}/{label_field!r}; {skipped} skipped)")
    return texts, labels, skipped


def choose_positive(labels: list[str], positive: str | None) -> str:
    distinct = sorted(set(labels))
    if len(distinct) < 2:
        raise ValueError(f"need at least two labels to train a classifier, found {distinct}")
    if positive is not None:
        positive = label_token(positive)
        if positive not in distinct:
            raise ValueError(f"positive label {positive!r} not among the labels {distinct}")
        return positive
    for name in POSITIVE_NAMES:
        if name in distinct:
            return name
    raise ValueError(f"cannot tell the positive label among {distinct}: pass --positive-label")


def prepare(texts: list[str], text_prep: dict) -> list[str]:
    return fasttext_lines(pa.array(texts, pa.large_string()), max_chars=text_prep["max_chars"], lowercase=text_prep["lowercase"])


def train_classifier(
    input_path: str | Path,
    output_path: str | Path,
    *,
    text_field: str = "text",
    label_field: str = "label",
    positive_label: str | None = None,
    holdout: float = 0.1,
    quantize: bool = True,
    epoch: int = 5,
    lr: float = 0.5,
    word_ngrams: int = 2,
    dim: int = 32,
    bucket: int = 100_000,
    quantize_cutoff: int = 20_000,
    threshold: float = 0.5,
    seed: int = 0,
) -> TrainResult:
    import fasttext

    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    texts, labels, skipped = read_labelled(input_path, text_field, label_field)
    positive = choose_positive(labels, positive_label)
    prepared = prepare(texts, TEXT_PREP)
    usable = [i for i, line in enumerate(prepared) if line.strip()]  # nothing left to learn from: skipped
    skipped += len(prepared) - len(usable)
    order = usable
    random.Random(seed).shuffle(order)
    n_hold = int(round(len(order) * holdout))
    hold_idx, train_idx = order[:n_hold], order[n_hold:]
    if not train_idx:
        raise ValueError("no training rows left after the held-out split")
    params = {"epoch": epoch, "lr": lr, "wordNgrams": word_ngrams, "dim": dim, "bucket": bucket, "seed": seed}
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.txt"
        with open(train_file, "w", encoding="utf-8") as fh:
            for i in train_idx:
                fh.write(f"__label__{labels[i]} {prepared[i]}\n")
        quantized = bool(quantize and len(train_idx) >= MIN_ROWS_TO_QUANTIZE)
        trained = Path(tmp) / "model.bin"
        # in a fresh process: fastText training in a process that already ran other fastText
        # models diverged ("Encountered NaN") where the same run in a new process did not
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            params = pool.apply(_train_supervised, (params, str(train_file), quantize_cutoff if quantized else None, str(trained)))
        model = fasttext.load_model(str(trained))
    result = TrainResult(str(output_path.name), positive, sorted(set(labels)), len(train_idx), n_hold, skipped, quantized,
                         threshold=threshold, params=params)
    if hold_idx:
        scores = positive_scores(model, [prepared[i] for i in hold_idx], positive)
        truth = [labels[i] == positive for i in hold_idx]
        result.precision, result.recall, result.f1 = precision_recall_f1(truth, [s >= threshold for s in scores])
        result.roc_auc = roc_auc(truth, scores)
    tmp_out = output_path.with_name(output_path.name + ".tmp")
    model.save_model(str(tmp_out))
    os.replace(tmp_out, output_path)
    # renamed over the old one: a filter loading the model in another process never reads half of it
    write_json_atomic(sidecar_path(output_path), result.as_dict())
    return result


def _train_supervised(params: dict, train_file: str, quantize_cutoff: int | None, output: str) -> dict:
    """Train (and quantize) into `output`; returns the parameters used. fastText's SGD now and
    then diverges ("Encountered NaN", raised by training or by the quantize call after it):
    start again with a halved learning rate, recording the rate that worked."""
    import fasttext

    params = dict(params)
    for attempt in range(4):
        try:
            model = fasttext.train_supervised(input=train_file, thread=1, verbose=0, minCount=1, **params)
            if quantize_cutoff:
                # the 20k most useful rows, 8-dim sub-quantizers: ~1 s of k-means instead of
                # ~30 s, at no measurable cost in held-out F1 on the toxicity set
                model.quantize(input=train_file, retrain=False, qnorm=True, cutoff=quantize_cutoff, dsub=8, thread=1, verbose=0)
            model.save_model(output)
            return params
        except RuntimeError as exc:
            if "NaN" not in str(exc) or attempt == 3:
                raise ValueError(f"fastText training failed: {exc}") from exc
            params["lr"] = params["lr"] / 2
    return params


def sidecar_path(model_path: str | Path) -> Path:
    return Path(str(model_path) + ".json")


def positive_scores(model, lines: list[str], positive: str) -> list[float]:
    """Probability of the positive label for each prepared line."""
    labels, probs = model.predict(lines, k=-1)
    key = f"__label__{positive}"
    return [float(next((p for lab, p in zip(ls, ps) if lab == key), 0.0)) for ls, ps in zip(labels, probs)]


def precision_recall_f1(truth: list[bool], predicted: list[bool]) -> tuple[float, float, float]:
    tp = sum(t and p for t, p in zip(truth, predicted))
    fp = sum(p and not t for t, p in zip(truth, predicted))
    fn = sum(t and not p for t, p in zip(truth, predicted))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return round(precision, 4), round(recall, 4), round(f1, 4)


def roc_auc(truth: list[bool], scores: list[float]) -> float | None:
    """Area under the ROC curve: the chance that a random positive scores above a random
    negative (ties count half), from the rank sum (Mann-Whitney U). None without both classes."""
    import numpy as np

    y = np.asarray(truth, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return None
    s = np.asarray(scores, np.float64)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_s = s[order]
    # average ranks over ties
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    for lo, hi in zip(starts, ends):
        ranks[order[lo:hi]] = (lo + hi + 1) / 2
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return round(float(u / (n_pos * n_neg)), 4)


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
