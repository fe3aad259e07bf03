"""Gopher repetition and quality rules, from the paper's definitions: documents built to sit
just inside and just outside each threshold."""

from __future__ import annotations

import pytest

from pipeline.steps.gopher import GopherQuality, GopherRepetition
from tests.filters.conftest import docs, reason, words


def lines_doc(unique: int, repeats: int) -> str:
    """`unique` long distinct lines and one short line occurring `repeats` + 1 times, spread out."""
    uniq = [" ".join(words(12, start=100 * i)) for i in range(unique)]
    out = []
    for i, line in enumerate(uniq):
        out.append(line)
        if i < repeats + 1:
            out.append("zz yy")
    return "\n".join(out)


@pytest.mark.parametrize("unique,repeats,expected", [(6, 3, None), (6, 4, "dup_line_frac")])
def test_duplicate_line_fraction(unique, repeats, expected):
    # 3 repeats of 10 lines = 0.30 (not above 0.30); 4 of 11 = 0.36
    assert reason(GopherRepetition(), docs(lines_doc(unique, repeats))) == [expected]


def test_duplicate_paragraph_fraction():
    paras = [" ".join(words(12, start=100 * i)) for i in range(7)]
    inside = "\n\n".join(paras[:4] + ["zz yy"] * 4 + paras[4:6])  # 3 repeats of 10 paragraphs
    outside = "\n\n".join(paras[:4] + ["zz yy"] * 5 + paras[4:6])  # 4 of 11
    r = reason(GopherRepetition(), docs(inside, outside))
    assert r == [None, "dup_para_frac"]


def test_duplicate_line_character_fraction():
    long_line = " ".join(words(10, start=5000))  # 59 characters
    filler = [" ".join(words(10, start=100 * i)) for i in range(9)]
    text = "\n".join(filler + [long_line, long_line])
    s = GopherRepetition().scores(docs(text).column("text").combine_chunks())
    assert s["dup_line_char_frac"][0] == pytest.approx(len(long_line) / len(text))
    lines_only = dict(dup_line_frac=1, top_n_grams={}, dup_n_grams={})
    assert reason(GopherRepetition(**lines_only), docs(text)) == [None]  # 59/659 < 0.2
    assert reason(GopherRepetition(dup_line_char_frac=0.08, **lines_only), docs(text)) == ["dup_line_char_frac"]


@pytest.mark.parametrize("n_unique,expected", [(40, None), (39, "top_2_gram")])
def test_top_bigram_fraction(n_unique, expected):
    # the bigram "qaaab qbbbc" (10 word characters) 5 times among n unique 5-letter words:
    # 50 / (5n + 50) = 0.200 for n = 40, 0.204 for n = 39
    filler = words(n_unique, start=1000)
    seq = []
    for i, w in enumerate(filler):
        seq.append(w)
        if i % 6 == 0 and seq.count("qaaab") < 5:
            seq += ["qaaab", "qbbbc"]
    assert seq.count("qaaab") == 5
    text = " ".join(seq)
    assert reason(GopherRepetition(), docs(text)) == [expected]


@pytest.mark.parametrize("total_words,expected", [(67, None), (66, "dup_5_gram")])
def test_duplicate_5gram_fraction(total_words, expected):
    # one 5-gram of 5-letter words twice: 50 of 5 * total characters, 0.149 vs 0.152
    gram = words(5, start=9000)
    filler = words(total_words - 10, start=20000)
    half = len(filler) // 2
    text = " ".join(gram + filler[:half] + gram + filler[half:])
    assert reason(GopherRepetition(), docs(text)) == [expected]


def test_overlapping_duplicate_ngrams_count_words_once():
    run = words(6, start=9000)  # two overlapping repeated 5-grams per occurrence
    filler = words(100, start=20000)
    text = " ".join(run + filler + run)
    s = GopherRepetition().scores(docs(text).column("text").combine_chunks())
    assert s["dup_5_gram"][0] == pytest.approx(12 * 5 / (112 * 5))
    assert s["dup_6_gram"][0] == pytest.approx(12 * 5 / (112 * 5))
    assert s["dup_7_gram"][0] == 0


def test_ngrams_do_not_cross_documents():
    a = " ".join(words(60, start=0))
    b = " ".join(words(60, start=0))  # the same text in another document is not a repeat
    assert reason(GopherRepetition(), docs(a, b)) == [None, None]


def quality_text(n_words: int, word_len: int = 5, extra: str = "") -> str:
    body = ["the", "and"] + words(n_words - 2, start=300, length=word_len)
    return " ".join(body) + extra


@pytest.mark.parametrize("n,expected", [(50, None), (49, "min_words")])
def test_minimum_word_count(n, expected):
    assert reason(GopherQuality(), docs(quality_text(n, word_len=4))) == [expected]


def test_mean_word_length_bounds():
    # 2 stop words (3 letters) + 48 words: mean of lengths
    short = " ".join(["the", "and"] + ["ab"] * 24 + ["abcd"] * 24)  # (6 + 48 + 96) / 50 = 3.0
    shorter = " ".join(["the", "and"] + ["ab"] * 25 + ["abcd"] * 23)  # 148 / 50 = 2.96
    long = " ".join(["the", "and"] + ["a" * 10] * 48 + ["a" * 24])  # (6 + 480 + 24) / 51 = 10.0
    longer = " ".join(["the", "and"] + ["a" * 10] * 48 + ["a" * 25])  # 511 / 51 = 10.02
    assert reason(GopherQuality(), docs(short, shorter, long, longer)) == [None, "min_mean_word_length", None, "max_mean_word_length"]


def test_hash_and_ellipsis_ratios():
    base = quality_text(50)
    assert reason(GopherQuality(), docs(base + " #" * 5, base + " #" * 6, "... " * 5 + base, "… " * 6 + base)) == [
        None, "hash_ratio", None, "ellipsis_ratio"]


def test_bullet_and_ellipsis_lines():
    lines = [" ".join(["the", "and"] + words(8, start=40 * i)) for i in range(10)]
    nine_bullets = "\n".join(["• " + l for l in lines[:9]] + lines[9:])
    all_bullets = "\n".join(["- " + l for l in lines])
    three_ellipsis = "\n".join([l + " …" for l in lines[:3]] + lines[3:])
    four_ellipsis = "\n".join([l + "..." for l in lines[:4]] + lines[4:])
    assert reason(GopherQuality(), docs(nine_bullets, all_bullets, three_ellipsis, four_ellipsis)) == [
        None, "bullet_lines", None, "ellipsis_lines"]


def test_alphabetic_words_and_stop_words():
    body = ["the", "and"] + words(78, start=300)
    inside = " ".join(body + ["12345"] * 20)  # 80 of 100 tokens have a letter
    outside = " ".join(body + ["12345"] * 21)  # 80 of 101
    one_stop = " ".join(["the"] + words(60, start=300))
    two_stop = " ".join(["The,", "(with"] + words(60, start=300))  # case and punctuation do not hide them
    german = " ".join(words(60, start=300))
    r = reason(GopherQuality(), docs(inside, outside, one_stop, two_stop))
    assert r == [None, "alpha_words", "stop_words", None]
    assert reason(GopherQuality(), docs(german, language="de")) == [None]  # no German list: rule skipped


# --- the two readings (docs/filters.md): where paper and datatrove 0.10.1 differ ------------

def test_reference_is_checked():
    with pytest.raises(ValueError, match="reference must be one of"):
        GopherQuality(reference="fineweb")


def test_stop_words_trimmed_of_low_quotes_and_angle_quotes():
    text = " ".join(["„the“", "‚and‘", "‹of›"] + words(60, start=300))
    assert GopherQuality().scores(docs(text).column("text").combine_chunks(), None)["stop_words"][0] == 3


def test_stop_words_are_case_sensitive_in_datatrove():
    text = " ".join(["The", "And"] + words(60, start=300))
    assert reason(GopherQuality(), docs(text)) == [None]
    assert reason(GopherQuality(reference="datatrove"), docs(text)) == ["stop_words"]


def test_spacy_splits_hyphenated_words_in_datatrove():
    # 30 "x-y" compounds: 30 words by whitespace, 60 words + 30 "-" symbols for spaCy
    compounds = [f"{a}-{b}" for a, b in zip(words(30, start=500), words(30, start=900))]
    text = " ".join(["the", "and"] + compounds) + "."
    assert reason(GopherQuality(), docs(text)) == ["min_words"]
    # the "-" tokens then weigh on the alphabetic-word ratio (62 of 93 tokens)
    assert reason(GopherQuality(reference="datatrove"), docs(text)) == ["alpha_words"]
    assert reason(GopherQuality(reference="datatrove", min_alpha_words_ratio=0.6), docs(text)) == [None]


def test_duplicate_ngrams_datatrove_counts_repeats_over_text_length():
    gram = words(5, start=9000)
    text = " ".join(gram + gram)  # 10 words of 5 letters, 59 characters
    only = dict(top_n_grams={}, dup_n_grams={5: 0.15})
    paper = GopherRepetition(**only).scores(docs(text).column("text").combine_chunks())
    dt = GopherRepetition(reference="datatrove", **only).scores(docs(text).column("text").combine_chunks())
    assert paper["dup_5_gram"][0] == pytest.approx(1.0)  # every word is covered, over word characters
    assert dt["dup_5_gram"][0] == pytest.approx(25 / 59)  # the second occurrence only, over len(text)


def test_datatrove_duplicate_walk_jumps_past_a_repeat():
    # a b c a b c a b c, n = 2: the walk sees ab bc ca, then ab (repeat, +2 chars, jump 2),
    # ca (repeat, jump), bc (repeat): 3 repeats of 2 letters = 6 characters
    text = " ".join("abcabcabc")
    s = GopherRepetition(reference="datatrove", top_n_grams={}, dup_n_grams={2: 1}).scores(docs(text).column("text").combine_chunks())
    assert s["dup_2_gram"][0] == pytest.approx(6 / len(text))


def test_top_ngram_occurring_once_counts_in_datatrove():
    text = " ".join(words(3, start=700))  # no repeated bigram at all
    only = dict(top_n_grams={2: 0.2}, dup_n_grams={})
    assert reason(GopherRepetition(**only), docs(text)) == [None]
    assert reason(GopherRepetition(reference="datatrove", **only), docs(text)) == ["top_2_gram"]  # 11/17 of the text


def test_datatrove_alpha_ratio_counts_punctuation_tokens():
    # spaCy splits a word's trailing full stop off as a token without a letter
    body = ["the", "and"] + words(78, start=300)
    fifteen = " ".join(w + "." if i % 5 == 0 else w for i, w in enumerate(body[:75])) + " " + " ".join(body[75:])
    twenty_five = " ".join(w + "." if i % 3 == 0 else w for i, w in enumerate(body[:75])) + " " + " ".join(body[75:])
    assert reason(GopherQuality(), docs(fifteen, twenty_five)) == [None, None]
    assert reason(GopherQuality(reference="datatrove"), docs(fifteen, twenty_five)) == [None, "alpha_words"]  # 80/95, 80/105
