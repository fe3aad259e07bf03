"""Configuration, the default chain end to end, and inputs that must never crash a step."""

from __future__ import annotations

import pytest

from pipeline.schema import documents_from_pylist
from pipeline.steps.base import Chain
from pipeline.steps.chain import build_chain, load_filter_config
from pipeline.steps.blocklist import Blocklist
from tests.filters.conftest import docs, reason


def test_defaults_and_user_override(tmp_path):
    defaults = load_filter_config()
    assert defaults["langid"]["threshold"] == 0.65 and defaults["gopher_repetition"]["dup_line_frac"] == 0.30
    user = tmp_path / "filters.yaml"
    user.write_text("langid:\n  languages: [en, de]\n  thresholds: {de: 0.7}\ntoxicity:\n  enabled: false\n")
    merged = load_filter_config(user)
    assert merged["langid"]["languages"] == ["en", "de"] and merged["langid"]["threshold"] == 0.65
    assert merged["langid"]["thresholds"] == {"de": 0.7} and merged["toxicity"]["enabled"] is False


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("order: [langid, sparkle]\n")
    with pytest.raises(ValueError, match="unknown filter steps"):
        load_filter_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("order: [c4]\nc4: {min_sentence: 3}\n")
    with pytest.raises(ValueError, match=r"\[c4\]"):
        build_chain(load_filter_config(typo))
    with pytest.raises(FileNotFoundError):
        load_filter_config(tmp_path / "missing.yaml")


@pytest.fixture(scope="module")
def default_chain_config(toxicity_model, shared):
    config = load_filter_config()
    config["langid"]["model"] = str(shared / "models" / "lid.176.ftz")
    config["toxicity"]["model"] = str(toxicity_model)
    return config


def test_default_chain_on_web_sample(default_chain_config, web_rows):
    chain = build_chain(default_chain_config)
    assert [s.name for s in chain.steps] == ["langid", "gopher_repetition", "gopher_quality", "c4", "fineweb", "toxicity", "pii"]
    table = documents_from_pylist(web_rows)
    out = chain(table)
    assert 0 < out.num_rows < table.num_rows
    assert set(out.column("language").to_pylist()) == {"en"}
    stats = chain.stats()
    for s in stats:  # the books balance at every step
        assert s.kept + sum(s.dropped.values()) == s.docs_in
    dropped = chain.dropped()
    assert dropped["langid:not_allowed"] > 0 and any(k.startswith("gopher_repetition:") for k in dropped)
    assert stats[0].docs_in == table.num_rows and stats[-1].kept == out.num_rows


ODD = [
    "",
    " \n\n \t ",
    "\u0000\u0001 control characters \u200b\u200d\ufeff",
    "统计局发布了最新的经济数据。" * 200,
    "مرحبا بالعالم. هذا نص عربي للاختبار. " * 50,
    "🙂" * 5000,
    "e\u0301" * 3000 + " combining marks",
    "\n" * 10000,
    "word " * 400_000,  # 2 MB of one repeated word
    "x" * 2_000_000,  # 2 MB, one token
]


def test_odd_inputs_never_crash(default_chain_config):
    config = dict(default_chain_config, langid=dict(default_chain_config["langid"], languages=None))
    chain = build_chain(config)
    for step in chain.steps:  # every step on every odd document, not only what survives
        step(docs(*ODD))
    out = chain(docs(*ODD))
    assert out.num_rows <= len(ODD)


def test_odd_inputs_never_crash_in_the_datatrove_reading(shared):
    from pipeline.steps.c4 import C4BadWords, C4Quality
    from pipeline.steps.fineweb import FineWebQuality
    from pipeline.steps.gopher import GopherQuality, GopherRepetition

    steps = [GopherRepetition(reference="datatrove"), GopherQuality(reference="datatrove"), C4Quality(reference="datatrove"),
             FineWebQuality(reference="datatrove"), C4BadWords(lists_dir=str(shared / "toxicity" / "ldnoobw"))]
    for step in steps:
        out = step(docs(*ODD))
        assert out.num_rows <= len(ODD) and step.stats.docs_in == len(ODD)


def test_blocklist_words_and_domains():
    table = documents_from_pylist([
        {"id": "1", "text": "A perfectly fine page.", "url": "https://news.example.org/a", "source": "t"},
        {"id": "2", "text": "Buy cheap Viagra now!", "url": "https://shop.test/x", "source": "t"},
        {"id": "3", "text": "Nothing bad here.", "url": "https://ads.spam.example/y", "source": "t"},
        {"id": "4", "text": "Viagraesque is not the word.", "url": None, "source": "t"},
    ])
    step = Blocklist(words=["viagra"], domains=["spam.example"])
    assert reason(step, table) == [None, "word", "domain", None]


def test_chain_of_no_steps_passes_through():
    table = docs("a", "b")
    assert Chain([])(table).num_rows == 2


def test_unspaced_languages_with_word_rules_are_refused():
    config = load_filter_config({"langid": {"languages": ["en", "zh"]}})
    with pytest.raises(ValueError, match=r"zh.*written without spaces"):
        build_chain(config)
    # without the word-based steps the same allow-list is fine (steps built lazily: no model needed)
    ok = load_filter_config({"langid": {"languages": ["en", "zh"]}, "order": ["toxicity"], "toxicity": {"enabled": False}})
    assert build_chain(ok).steps == []


def test_reference_option_reaches_every_heuristic_step(web_rows):
    names = ["gopher_repetition", "gopher_quality", "c4", "fineweb"]
    config = load_filter_config({**{n: {"reference": "datatrove"} for n in names}, "order": names})
    chain = build_chain(config)
    assert [s.reference for s in chain.steps] == ["datatrove"] * 4
    table = documents_from_pylist(web_rows[:60])
    out = chain(table)
    assert 0 < out.num_rows < table.num_rows
    assert all(s.stats.docs_in for s in chain.steps)
    with pytest.raises(ValueError, match="c4: reference must be one of"):
        build_chain(load_filter_config({"c4": {"reference": "t5"}, "order": ["c4"]}))
