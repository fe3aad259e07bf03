"""Applying a supervised fastText classifier (trained by `tokenmill classifier train`) as a
filter: a score column with the positive label's probability, documents at or above the
threshold dropped (`above_threshold`), or kept only above it with `keep: above`.

A document with fewer than `min_words` words (after the model's text preparation) is too
short to judge: the classifier abstains, its score is null and it is kept whatever `keep`
says (counter `abstained`). fastText gives a text of unseen or no words the label prior, so
without this an empty page scores as the training set's toxic share.

The default toxicity model is not shipped: it is trained on first use from the human-labelled
Wikipedia talk-page comments in `$TOKENMILL_SHARED/toxicity/jigsaw_wiki_comments.jsonl.gz`
with fixed settings (`TOXICITY_TRAINING`, one thread, fixed seed), so the same data gives the
same model bytes, and cached under a name derived from the data's digest and the settings.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.card import score_histogram
from pipeline.classifier_train import TEXT_PREP, file_digest, positive_scores, prepare, sidecar_path, train_classifier
from pipeline.settings import tokenmill_home
from pipeline.steps.base import Step
from pipeline.settings import shared_dir
from pipeline.steps.langid import load_fasttext
from pipeline.steps.text import text_column, with_columns

# Settings chosen on the held-out split (bench/filters_cls.py): unigrams, 16 dimensions, 5
# epochs reach F1 ~0.85 / ROC-AUC ~0.95 on comments; bigrams, 32-50 dimensions or 10-20
# epochs did not do better.
TOXICITY_TRAINING = {"text_field": "text", "label_field": "toxic", "positive_label": "true", "holdout": 0.1, "quantize": True, "seed": 0,
                     "epoch": 5, "lr": 0.5, "word_ngrams": 1, "dim": 16}
# Calibrated on the web sample: at 0.5 the default model drops < 1 % of ordinary English pages
# (not forums, not 4chan) and about half the 4chan threads; bench/filters_cls.py measures it.
DEFAULT_THRESHOLD = 0.5
# Fewer words than this: too short to judge, the classifier abstains (keeps the document).
DEFAULT_MIN_WORDS = 3


def default_toxicity_data() -> Path:
    return shared_dir() / "toxicity" / "jigsaw_wiki_comments.jsonl.gz"


def toxicity_model_path(cache_dir: Path, data_path: Path) -> Path:
    """Where the default model trained from `data_path` is cached: named by the data's digest
    and the training settings."""
    key = json.dumps({"data": file_digest(data_path), "training": TOXICITY_TRAINING, "prep": TEXT_PREP}, sort_keys=True)
    return cache_dir / f"toxicity-{hashlib.sha256(key.encode()).hexdigest()[:12]}.ftz"


@contextlib.contextmanager
def training_lock(model_path: Path):
    """One process trains a cached model at a time; the others wait and then reuse it (two
    refreshes starting together both trained it, and the second rewrote the sidecar while
    the first's filters read it)."""
    with open(model_path.with_name(f".{model_path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_toxicity_model(cache_dir: str | Path | None = None, data_path: str | Path | None = None) -> Path:
    """The default toxicity model, trained from the labelled comments on first use and cached
    (train once, also when several processes start at the same time)."""
    data_path = Path(data_path) if data_path else default_toxicity_data()
    cache_dir = Path(cache_dir) if cache_dir else tokenmill_home() / "models"
    if not data_path.is_file():
        raise FileNotFoundError(f"toxicity training data not found: {data_path}")
    model_path = toxicity_model_path(cache_dir, data_path)

    def cached() -> bool:  # train_classifier writes the sidecar last: a model beside it is complete
        return model_path.is_file() and sidecar_path(model_path).is_file()

    if cached():
        return model_path
    cache_dir.mkdir(parents=True, exist_ok=True)
    with training_lock(model_path):
        if not cached():  # else trained by the process we waited for
            train_classifier(data_path, model_path, threshold=DEFAULT_THRESHOLD, **TOXICITY_TRAINING)
    return model_path


class ClassifierFilter(Step):
    def __init__(self, model: str | Path, *, name: str = "classifier", threshold: float = 0.5, keep: str = "below",
                 score_column: str | None = None, positive_label: str | None = None, min_words: int = 0):
        if keep not in ("below", "above"):
            raise ValueError(f"keep must be 'below' or 'above', got {keep!r}")
        if not isinstance(min_words, int) or min_words < 0:
            raise ValueError(f"min_words must be an integer >= 0, got {min_words!r}")
        self.min_words = min_words
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
        """The positive label's probability per text; NaN where the classifier abstains."""
        lines = prepare(texts.to_pylist(), self.text_prep)
        scores = np.asarray(positive_scores(self.model, lines, self.positive), dtype=np.float32)
        if self.min_words:
            words = np.fromiter((len(line.split(None, self.min_words)) for line in lines), np.int64, len(lines))
            scores[words < self.min_words] = np.nan
        return scores

    def annotate(self, table):
        scores = self.scores(text_column(table))
        abstained = np.isnan(scores)
        self.stats.counters.update(score_histogram(scores[~abstained]))  # the score distribution on the dataset card
        if abstained.any():
            self.stats.counters["abstained"] += int(abstained.sum())
        table = with_columns(table, {self.score_column: pa.array(scores, pa.float32(), mask=abstained)})
        drop = scores >= self.threshold if self.keep == "below" else scores < self.threshold
        drop &= ~abstained
        reason = "above_threshold" if self.keep == "below" else "below_threshold"
        return table, pa.array(np.where(drop, reason, None).tolist(), pa.string())
