"""C4 (T5 paper / tfds reference order) and FineWeb rules, from their definitions."""

from __future__ import annotations

import pytest

from pipeline.steps.c4 import C4Quality
from pipeline.steps.fineweb import FineWebQuality
from tests.filters.conftest import docs, reason

GOOD = [f"This is sentence number {n} of a page about nothing much." for n in range(1, 7)]


def page(lines):
    return "\n".join(lines)


@pytest.mark.parametrize("n,expected", [(5, None), (4, "min_sentences")])
def test_c4_minimum_sentences(n, expected):
    assert reason(C4Quality(), docs(page(GOOD[:n]))) == [expected]


def test_c4_sentences_inside_one_line_count():
    two_per_line = [f"First part {n} is here. Second part {n} follows!" for n in range(3)]  # 6 sentences
    assert reason(C4Quality(), docs(page(two_per_line))) == [None]


def test_c4_line_rules_rewrite_the_text():
    lines = GOOD[:5] + [
        "Menu",  # no terminal punctuation
        "Too short.",  # fewer than 3 words
        "Please enable JavaScript to view the comments.",
        "By using this site you agree to our Terms of Use.",
        "Wait for it...",  # ellipsis is not an end mark
        "A claim with a marker.[1]",  # citation removed, then it ends with "."
        "x" * 1001 + " is a long word.",
    ]
    step = C4Quality()
    out = step(docs(page(lines)))
    assert out.column("text")[0].as_py() == page(GOOD[:5] + ["A claim with a marker."])
    c = step.stats.counters
    assert c["lines_removed:no_terminal_punct"] == 2 and c["lines_removed:too_few_words"] == 1
    assert c["lines_removed:javascript"] == 1 and c["lines_removed:policy"] == 1 and c["lines_removed:too_long_word"] == 1


def test_c4_page_drops():
    lorem = page(GOOD[:5] + ["Lorem ipsum dolor sit amet."])
    curly = page(GOOD[:5] + ["The function f() { return 1; } is here."])
    curly_in_removed_line = page(GOOD[:5] + ["if (x) { y }"])  # the line goes first (no end mark)
    curly_then_lorem = page(["We write { here.", "Lorem ipsum dolor sit amet."] + GOOD[:5])
    r = reason(C4Quality(), docs(lorem, curly, curly_in_removed_line, curly_then_lorem))
    assert r == ["lorem_ipsum", "curly_bracket", None, "curly_bracket"]


def test_c4_without_rewrite_keeps_text():
    text = page(GOOD[:5] + ["Menu"])
    out = C4Quality(rewrite=False)(docs(text))
    assert out.column("text")[0].as_py() == text


def fw_lines(n_punct: int, n_plain: int) -> str:
    punct = [f"A reasonably long line number {i} that ends properly." for i in range(n_punct)]
    plain = [f"A reasonably long line number {i} without an ending" for i in range(n_plain)]
    return "\n".join(punct + plain)


@pytest.mark.parametrize("punct,plain,expected", [(3, 22, None), (3, 23, "line_punct_ratio")])
def test_fineweb_line_punctuation(punct, plain, expected):
    # 3/25 = 0.12 is not below 0.12; 3/26 is
    assert reason(FineWebQuality(), docs(fw_lines(punct, plain))) == [expected]


def test_fineweb_short_lines():
    long = [f"A reasonably long line number {i} that ends properly." for i in range(10)]
    short = [f"Short {i}." for i in range(21)]
    inside = "\n".join(long + short[:20])  # 20/30 = 0.667
    outside = "\n".join(long + short[:21])  # 21/31 = 0.677
    assert reason(FineWebQuality(), docs(inside, outside)) == [None, "short_line_ratio"]


def test_fineweb_duplicate_line_characters_and_list_ratio():
    body = [f"Line {i} has a few distinct words in it, to be sure." for i in range(60)]
    dup = "\n".join(body + [body[0]])  # 50 of ~3100 characters repeated: 1.6 % > 1 %
    list_like = "\n".join(f"Catalogue-item-{i:03d} sold-out-since-yesterday." for i in range(40))  # 39 newlines / 80 words
    r = reason(FineWebQuality(), docs("\n".join(body), dup, list_like))
    assert r == [None, "char_dup_ratio", "list_ratio"]


def test_fineweb_uses_unicode_sentence_terminals():
    lines = [f"これは{i}番目の長い行で、句点で終わる文です。日本語のテキストです。" for i in range(10)]
    assert reason(FineWebQuality(new_line_ratio=100), docs("\n".join(lines))) == [None]
