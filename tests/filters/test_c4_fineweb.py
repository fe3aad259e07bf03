"""C4 (T5 paper / tfds reference order) and FineWeb rules, from their definitions."""

from __future__ import annotations

import pytest

from pipeline.steps.c4 import C4BadWords, C4Quality
from pipeline.steps.fineweb import FineWebQuality
from tests.filters.conftest import docs, reason

GOOD = [f"This is sentence number {n} of a page about nothing much." for n in range(1, 7)]


def page(lines):
    return "\n".join(lines)


@pytest.mark.parametrize("reference,n,expected", [
    ("paper", 3, None), ("paper", 2, "min_sentences"),  # tfds c4_utils: 3 sentences
    ("datatrove", 5, None), ("datatrove", 4, "min_sentences"),
])
def test_c4_minimum_sentences(reference, n, expected):
    assert reason(C4Quality(reference=reference), docs(page(GOOD[:n]))) == [expected]


@pytest.mark.parametrize("reference", ["paper", "datatrove"])
def test_c4_sentences_inside_one_line_count(reference):
    two_per_line = [f"First part {n} is here. Second part {n} follows!" for n in range(3)]  # 6 sentences
    assert reason(C4Quality(reference=reference, min_sentences=6), docs(page(two_per_line))) == [None]
    assert reason(C4Quality(reference=reference, min_sentences=7), docs(page(two_per_line))) == ["min_sentences"]


def test_c4_words_per_line_and_end_marks_by_reference():
    cited = "See this [1] [2] [3] [4]."  # 6 words before removing citations, 3 after
    quoted = "He said it was 'fine by me'"  # ends in ' : an end mark for datatrove only
    text = page(GOOD[:5] + [cited, quoted])
    out_paper = C4Quality(min_words_per_line=4)(docs(text))
    out_dt = C4Quality(reference="datatrove", min_words_per_line=4)(docs(text))
    assert out_paper.column("text")[0].as_py() == page(GOOD[:5])
    assert out_dt.column("text")[0].as_py() == page(GOOD[:5] + ["See this    .", quoted])


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
    curly_then_lorem = page(["We write { here in this line.", "Lorem ipsum dolor sit amet."] + GOOD[:5])
    lorem_and_curly = page(GOOD[:5] + ["Lorem ipsum { dolor sit amet."])  # both on one line: still dropped
    r = reason(C4Quality(), docs(lorem, curly, curly_in_removed_line, curly_then_lorem, lorem_and_curly))
    assert r == ["lorem_ipsum", "curly_bracket", None, "curly_bracket", "lorem_ipsum"]


def test_c4_strips_like_python():
    # \x1f and \x85 are whitespace to str.strip(); the rewritten text has none at either end
    text = page(["\x1f" + GOOD[0] + "\x85"] + GOOD[1:5])
    out = C4Quality(reference="datatrove")(docs(text))
    assert out.column("text")[0].as_py() == page(GOOD[:5])


@pytest.fixture(scope="module")
def badword(shared):
    return (shared / "toxicity" / "ldnoobw" / "en").read_text(encoding="utf-8").splitlines()[0]


def test_c4_badwords_whole_words(shared, badword):
    step = C4BadWords(lists_dir=str(shared / "toxicity" / "ldnoobw"))
    texts = [f"A page that says {badword} once.", f"A page that says {badword.upper()}!", f"A page that says x{badword}y.", "A clean page."]
    assert reason(step, docs(*texts)) == ["badwords", "badwords", None, None]
    assert step.stats.files["badwords:en"].endswith("ldnoobw/en")


def test_c4_badwords_languages(shared, badword):
    lists = str(shared / "toxicity" / "ldnoobw")
    ja = (shared / "toxicity" / "ldnoobw" / "ja").read_text(encoding="utf-8").splitlines()
    ja_word = next(w for w in ja if w not in ("sm", "グロ", "女の子"))
    step = C4BadWords(lists_dir=lists)
    assert reason(step, docs(f"これは{ja_word}です", language="ja")) == ["badwords"]  # no word boundaries in ja
    assert reason(step, docs(f"says {badword} here", language="xx")) == [None]  # no list: kept, counted
    assert step.stats.counters["missing_language:xx"] == 1
    with pytest.raises(ValueError, match="no bad-words list"):
        C4BadWords(lists_dir=lists, fail_on_missing_language=True).annotate(docs("text", language="xx"))
    assert reason(C4BadWords(lists_dir=lists, keep_fraction=1.0), docs(f"says {badword} here")) == [None]
    with pytest.raises(FileNotFoundError):
        C4BadWords(lists_dir=str(shared / "missing"))


def test_c4_without_rewrite_keeps_text():
    text = page(GOOD[:5] + ["Menu"])
    out = C4Quality(rewrite=False)(docs(text))
    assert out.column("text")[0].as_py() == text


def fw_lines(n_punct: int, n_plain: int) -> str:
    punct = [f"A reasonably long line number {i} that ends properly." for i in range(n_punct)]
    plain = [f"A reasonably long line number {i} without an ending" for i in range(n_plain)]
    return "\n".join(punct + plain)


@pytest.mark.parametrize("reference", ["paper", "datatrove"])
@pytest.mark.parametrize("punct,plain,expected", [(3, 22, None), (3, 23, "line_punct_ratio")])
def test_fineweb_line_punctuation(reference, punct, plain, expected):
    # 3/25 = 0.12 is not below 0.12; 3/26 is
    assert reason(FineWebQuality(reference=reference), docs(fw_lines(punct, plain))) == [expected]


def test_fineweb_list_ratio_divides_by_spacy_words_in_datatrove():
    # 40 lines of 3 hyphenated tokens: 39 newlines / 120 whitespace words = 0.325 (paper drops);
    # spaCy splits each "a-b" into 3 tokens: 39 / 280 (datatrove keeps)
    lines = "\n".join(f"Alpha-beta {i}-gamma delta-epsilon{i}." for i in range(40))
    assert reason(FineWebQuality(short_line_thr=1), docs(lines)) == ["list_ratio"]
    assert reason(FineWebQuality(reference="datatrove", short_line_thr=1), docs(lines)) == [None]


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
