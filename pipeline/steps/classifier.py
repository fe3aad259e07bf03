"""Applying a supervised fastText classifier (trained by `tokenmill classifier train`) as a
filter: a score column with the positive label's probability, documents at or above the
threshold dropped (`above_threshold`), or kept only above it with `keep: above`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.classifier_train import TEXT_PREP, file_digest, positive_scores, prepare, sidecar_path, train_classifier
from pipeline.settings import tokenmill_home
from pipeline.steps.base import Step
from pipeline.settings import shared_dir
from pipeline.steps.langid import load_fasttext
from pipeline.steps.text import text_column, with_columns

TOXICITY_TRAINING = {"text_field": "text", "label_field": "toxic", "positive_label": "true", "holdout": 0.1, "quantize": True, "seed": 0}


def default_toxicity_data() -> Path:
    return shared_dir() / "toxicity" / "davidson_tweets.jsonl.gz"


def ensure_toxicity_model(cache_dir: str | Path | None = None, data_path: str | Path | None = None) -> Path:
    """The default toxicity model, trained from the labelled tweets on first use and cached
    under a name derived from the data's digest and the training settings (train once)."""
    data_path = Path(data_path) if data_path else default_toxicity_data()
    cache_dir = Path(cache_dir) if cache_dir else tokenmill_home() / "models"
    if not data_path.is_file():
        raise FileNotFoundError(f"toxicity training data not found: {data_path}")
    key = json.dumps({"data": file_digest(data_path), "training": TOXICITY_TRAINING, "prep": TEXT_PREP}, sort_keys=True)
    model_path = cache_dir / f"toxicity-{hashlib.sha256(key.encode()).hexdigest()[:12]}.ftz"
    if model_path.is_file() and sidecar_path(model_path).is_file():
        return model_path
    cache_dir.mkdir(parents=True, exist_ok=True)
    # train beside the final name and rename: concurrent workers never read a half-written model
    scratch = cache_dir / f".{model_path.name}.{os.getpid()}.ftz"
    train_classifier(data_path, scratch, **TOXICITY_TRAINING)
    record = json.loads(sidecar_path(scratch).read_text())
    record["model_path"] = model_path.name
    sidecar_path(model_path).write_text(json.dumps(record, indent=2, sort_keys=True))
    sidecar_path(scratch).unlink()
    os.replace(scratch, model_path)
    return model_path


class ClassifierFilter(Step):
    def __init__(self, model: str | Path, *, name: str = "classifier", threshold: float = 0.5, keep: str = "below",
                 score_column: str | None = None, positive_label: str | None = None):
        if keep not in ("below", "above"):
            raise ValueError(f"keep must be 'below' or 'above', got {keep!r}")
        self.name = name
        super().__init__()
        self.model_path = Path(model)
        self.model = load_fasttext(self.model_path)
        meta = json.loads(sidecar_path(self.model_path).read_text()) if sidecar_path(self.model_path).is_file() else {}
        self.positive = positive_label or meta.get("positive_label")
        if self.positive is None:
            raise ValueError(f"{self.model_path}: no sidecar JSON naming the positive label; give positive_label")
        self.text_prep = meta.get("text_prep", TEXT_PREP)
        self.threshold = threshold
        self.keep = keep
        self.score_column = score_column or f"{name}_score"

    def scores(self, texts: pa.Array) -> np.ndarray:
        lines = prepare(texts.to_pylist(), self.text_prep)
        return np.asarray(positive_scores(self.model, lines, self.positive), dtype=np.float32)

    def annotate(self, table):
        scores = self.scores(text_column(table))
        table = with_columns(table, {self.score_column: pa.array(scores, pa.float32())})
        drop = scores >= self.threshold if self.keep == "below" else scores < self.threshold
        reason = "above_threshold" if self.keep == "below" else "below_threshold"
        return table, pa.array(np.where(drop, reason, None).tolist(), pa.string())
