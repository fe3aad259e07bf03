"""Building the filter chain from configuration: defaults in default_filters.yaml, a user
file merged over them, one Step per enabled entry in `order`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import yaml

from pipeline.steps.base import Chain, Step
from pipeline.steps.budget import CpuBudget

DEFAULTS_PATH = Path(__file__).with_name("default_filters.yaml")


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a filter config must be a mapping, got {type(data).__name__}")
    return data


def load_filter_config(overrides: str | Path | dict | None = None) -> dict:
    """The defaults, with the user's overrides merged over them: a YAML file, or a mapping
    (e.g. a flow parameter). Plain JSON-able data: hash it for dataset versions."""
    config = _read_yaml(DEFAULTS_PATH)
    if isinstance(overrides, dict):
        config = _merge(config, overrides)
    elif overrides is not None:
        path = Path(overrides)
        if not path.is_file():
            raise FileNotFoundError(f"filter config not found: {path}")
        config = _merge(config, _read_yaml(path))
    unknown = [name for name in config["order"] if name not in BUILDERS]
    if unknown:
        raise ValueError(f"unknown filter steps {unknown}; known: {sorted(BUILDERS)}")
    return config


def _options(section: dict) -> dict:
    return {k: v for k, v in section.items() if k != "enabled"}


def _langid(c: dict) -> Step:
    from pipeline.steps.langid import LanguageId

    return LanguageId(**_options(c))


def _gopher_repetition(c: dict) -> Step:
    from pipeline.steps.gopher import GopherRepetition

    return GopherRepetition(**_options(c))


def _gopher_quality(c: dict) -> Step:
    from pipeline.steps.gopher import GopherQuality

    return GopherQuality(**_options(c))


def _c4(c: dict) -> Step:
    from pipeline.steps.c4 import C4Quality

    return C4Quality(**_options(c))


def _c4_badwords(c: dict) -> Step:
    from pipeline.steps.c4 import C4BadWords

    return C4BadWords(**_options(c))


def _fineweb(c: dict) -> Step:
    from pipeline.steps.fineweb import FineWebQuality

    return FineWebQuality(**_options(c))


def _toxicity(c: dict) -> Step:
    from pipeline.steps.classifier import DEFAULT_MIN_WORDS, DEFAULT_THRESHOLD, ClassifierFilter, ensure_toxicity_model

    unknown = sorted(set(c) - {"enabled", "model", "data", "cache_dir", "threshold", "keep", "positive_label", "min_words"})
    if unknown:
        raise TypeError(f"unknown options {unknown}")
    model = c.get("model") or "default"
    if model == "default":
        model = ensure_toxicity_model(c.get("cache_dir"), c.get("data"))
    return ClassifierFilter(model, name="toxicity", threshold=c.get("threshold", DEFAULT_THRESHOLD), keep=c.get("keep", "below"),
                            positive_label=c.get("positive_label"), min_words=c.get("min_words", DEFAULT_MIN_WORDS))


def _blocklist(c: dict) -> Step:
    from pipeline.steps.blocklist import Blocklist

    return Blocklist(**_options(c))


def _pii(c: dict) -> Step:
    from pipeline.steps.pii import PIIFilter

    return PIIFilter(**_options(c))


BUILDERS: dict[str, Callable[[dict], Step]] = {
    "langid": _langid,
    "gopher_repetition": _gopher_repetition,
    "gopher_quality": _gopher_quality,
    "c4": _c4,
    "c4_badwords": _c4_badwords,
    "fineweb": _fineweb,
    "toxicity": _toxicity,
    "blocklist": _blocklist,
    "pii": _pii,
}


def build_chain(config: dict[str, Any] | None = None) -> Chain:
    """One Step per enabled entry of `config["order"]`; None = the defaults."""
    config = load_filter_config() if config is None else config
    budget = CpuBudget.from_config(config.get("cpu_budget"))
    from pipeline.steps.text import refuse_unspaced_languages

    refuse_unspaced_languages(config)
    steps = []
    for name in config["order"]:
        if name not in BUILDERS:
            raise ValueError(f"unknown filter step {name!r}; known: {sorted(BUILDERS)}")
        section = config.get(name) or {}
        if section.get("enabled", True):
            try:
                steps.append(BUILDERS[name](section))
            except TypeError as exc:  # an unknown option in the user's file
                raise ValueError(f"filter config [{name}]: {exc}") from exc
    for step in steps:
        step.budget = budget
    return Chain(steps)
