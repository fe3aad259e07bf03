"""Gopher's repetition and quality rules (Rae et al. 2021, "Scaling Language Models: Methods,
Analysis & Insights from Training Gopher", appendix A.1.1 and table A1).

`reference: datatrove` reproduces datatrove 0.10.1's GopherRepetitionFilter and
GopherQualityFilter instead (see the `_datatrove_scores` methods and docs/filters.md).
Definitions used by `reference: paper` (where the paper leaves a detail open, the choice is stated):
- words: whitespace-separated tokens, taken as they are (no normalisation).
- lines: the non-blank lines; paragraphs: the stripped text split on two or more newlines.
- a "duplicate" line/paragraph is an occurrence that repeats an earlier identical one in the
  same document; its characters count towards the duplicate character fraction, whose
  denominator is the document's length in characters.
- n-gram character counts are sums of the words' lengths, over the document's total word
  characters. Top n-gram (n = 2, 3, 4): count × characters of the most frequent n-gram (ties:
  the longer), only when it occurs more than once. Duplicate n-grams (n = 5..10): characters
  of every word covered by an n-gram occurring more than once, each word counted once
  however many overlapping n-grams cover it.
- quality: "words" for count and mean length are tokens holding a letter or digit; the
  alphabetic-word rule looks at every token; stop words are matched lowercased with
  surrounding punctuation trimmed, for languages that have a list (English by default).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.steps.base import Step
from pipeline.steps.text import (
    DATATROVE_PUNCTUATION,
    LINE_BREAKS,
    as_bool,
    char_class,
    check_reference,
    duplicate_stats,
    first_reason,
    lengths,
    py_strip,
    safe_div,
    segment_ids,
    segment_sum,
    split,
    split_words,
    splitlines_count,
    text_column,
    with_columns,
)

_HASH_MULT = np.uint64(0x9E3779B97F4A7C15)
_DOC_MULT = np.uint64(0xC2B2AE3D27D4EB4F)


class GopherRepetition(Step):
    name = "gopher_repetition"

    def __init__(
        self,
        dup_line_frac: float = 0.30,
        dup_para_frac: float = 0.30,
        dup_line_char_frac: float = 0.20,
        dup_para_char_frac: float = 0.20,
        top_n_grams: dict | None = None,
        dup_n_grams: dict | None = None,
        reference: str = "paper",
        keep_scores: bool = False,
    ):
        super().__init__()
        self.reference = check_reference(self.name, reference)
        self.dup_line_frac = dup_line_frac
        self.dup_para_frac = dup_para_frac
        self.dup_line_char_frac = dup_line_char_frac
        self.dup_para_char_frac = dup_para_char_frac
        top_n_grams = {2: 0.20, 3: 0.18, 4: 0.16} if top_n_grams is None else top_n_grams
        dup_n_grams = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10} if dup_n_grams is None else dup_n_grams
        self.top_n_grams = {int(k): float(v) for k, v in top_n_grams.items()}  # {} switches the rule family off
        self.dup_n_grams = {int(k): float(v) for k, v in dup_n_grams.items()}
        self.keep_scores = keep_scores

    def scores(self, texts: pa.Array) -> dict[str, np.ndarray]:
        if self.reference == "datatrove":
            return self._datatrove_scores(texts)
        text_len = lengths(texts)
        paras, p_off = split(pc.utf8_trim_whitespace(texts), r"\n{2,}", regex=True)
        p_dup, p_chars = duplicate_stats(paras, p_off, lengths(paras))
        lines, l_off = split(texts, "\n")
        nonblank = lengths(pc.utf8_trim_whitespace(lines)) > 0
        l_dup, l_chars = duplicate_stats(lines, l_off, lengths(lines), keep=nonblank)
        n_lines = segment_sum(nonblank.astype(np.int64), l_off)
        out = {
            "dup_para_frac": safe_div(p_dup, np.diff(p_off)),
            "dup_para_char_frac": safe_div(p_chars, text_len),
            "dup_line_frac": safe_div(l_dup, n_lines),
            "dup_line_char_frac": safe_div(l_chars, text_len),
        }
        words, w_off = split_words(texts)
        out.update(ngram_fractions(words, w_off, sorted(self.top_n_grams), sorted(self.dup_n_grams)))
        return out

    def _datatrove_scores(self, texts: pa.Array) -> dict[str, np.ndarray]:
        """datatrove 0.10.1's GopherRepetitionFilter: paragraphs split on \\n{2,} of the
        stripped text, lines on \\n+ (blank pieces included), repeats only counted, every
        character fraction over len(text), spaCy words (pipeline/steps/spacy_words.py)."""
        from pipeline.steps.spacy_words import spacy_words

        text_len = lengths(texts)
        paras, p_off = split(py_strip(texts), r"\n{2,}", regex=True)
        p_dup, p_chars = duplicate_stats(paras, p_off, lengths(paras))
        lines, l_off = split(texts, r"\n+", regex=True)
        l_dup, l_chars = duplicate_stats(lines, l_off, lengths(lines))
        out = {
            "dup_para_frac": safe_div(p_dup, np.diff(p_off)),
            "dup_para_char_frac": safe_div(p_chars, text_len),
            "dup_line_frac": safe_div(l_dup, np.diff(l_off)),
            "dup_line_char_frac": safe_div(l_chars, text_len),
        }
        words, w_off = spacy_words(texts)
        out.update(datatrove_ngram_fractions(words, w_off, text_len, sorted(self.top_n_grams), sorted(self.dup_n_grams)))
        return out

    def annotate(self, table):
        texts = text_column(table)
        s = self.scores(texts)
        rules = [("empty", lengths(texts) == 0)]
        rules += [(name, s[name] > limit) for name, limit in (
            ("dup_para_frac", self.dup_para_frac),
            ("dup_para_char_frac", self.dup_para_char_frac),
            ("dup_line_frac", self.dup_line_frac),
            ("dup_line_char_frac", self.dup_line_char_frac),
        )]
        rules += [(f"top_{n}_gram", s[f"top_{n}_gram"] > limit) for n, limit in sorted(self.top_n_grams.items())]
        rules += [(f"dup_{n}_gram", s[f"dup_{n}_gram"] > limit) for n, limit in sorted(self.dup_n_grams.items())]
        if self.keep_scores:
            table = with_columns(table, {f"{self.name}_{k}": v.astype(np.float32) for k, v in s.items()})
        return table, first_reason(table.num_rows, rules)


def ngram_fractions(words: pa.Array, offsets: np.ndarray, top_ns: list[int], dup_ns: list[int]) -> dict[str, np.ndarray]:
    """Top and duplicate n-gram character fractions per document.

    Each word becomes a random 64-bit value (via Arrow's dictionary encoding), an n-gram the
    polynomial combination of its words' values, rolled forward one word per n. An n-gram can
    only repeat where its (n-1)-word prefix repeats, so after each n only the positions whose
    n-gram occurs more than once are carried to n+1: the sorts shrink fast."""
    n_docs = len(offsets) - 1
    out = {f"top_{n}_gram": np.zeros(n_docs) for n in top_ns}
    out.update({f"dup_{n}_gram": np.zeros(n_docs) for n in dup_ns})
    n_words = len(words)
    max_n = max(top_ns + dup_ns, default=0)
    if n_words == 0 or max_n == 0:
        return out
    values, doc, doc_end, doc_key = _word_values(words, offsets)
    word_len = lengths(words)
    char_cs = np.zeros(n_words + 1, np.int64)
    np.cumsum(word_len, out=char_cs[1:])
    total_chars = segment_sum(word_len, offsets)

    hashes = values.copy()
    positions = np.arange(n_words)
    for n in range(1, max_n + 1):
        if n > 1:
            hashes[: n_words - n + 1] = hashes[: n_words - n + 1] * _HASH_MULT + values[n - 1 :]
        positions = positions[positions + n <= doc_end[positions]]
        if len(positions) == 0:
            break
        keys = hashes[positions] + doc_key[positions]
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        occurrences = counts[inverse]
        repeated = occurrences > 1
        positions, occurrences = positions[repeated], occurrences[repeated]
        if n in top_ns and len(positions):
            chars = char_cs[positions + n] - char_cs[positions]
            # most frequent n-gram per document, the longer one on ties: maximise (count, chars)
            rank = occurrences.astype(np.int64) << 40 | chars
            best = np.zeros(n_docs, np.int64)
            np.maximum.at(best, doc[positions], rank)
            out[f"top_{n}_gram"] = safe_div((best >> 40) * (best & ((1 << 40) - 1)), total_chars)
        if n in dup_ns and len(positions):
            cover = np.bincount(positions, minlength=n_words + 1) - np.bincount(positions + n, minlength=n_words + 1)
            covered = np.cumsum(cover)[:n_words] > 0
            out[f"dup_{n}_gram"] = safe_div(segment_sum(np.where(covered, word_len, 0), offsets), total_chars)
    return out


def _word_values(words: pa.Array, offsets: np.ndarray):
    """Each word as a random 64-bit value (one per distinct word, via Arrow's dictionary
    encoding; a fixed seed: the same text always gives the same figures), each word's document,
    that document's end, and the per-document key mixed into n-gram hashes."""
    codes = np.asarray(pc.dictionary_encode(words).indices, dtype=np.int64)
    rng = np.random.default_rng(0x60F4E2)
    values = rng.integers(0, np.iinfo(np.uint64).max, size=int(codes.max()) + 1, dtype=np.uint64, endpoint=True)[codes]
    doc = segment_ids(offsets)
    return values, doc, offsets[1:][doc], doc.astype(np.uint64) * _DOC_MULT


def _ngram_keys(words: pa.Array, offsets: np.ndarray, max_n: int):
    """Yield (n, positions, keys) for n = 1..max_n: every n-gram that fits in its document,
    keyed by a 64-bit rolling hash of its words (mixed with the document index)."""
    n_words = len(words)
    values, _, doc_end, doc_key = _word_values(words, offsets)
    hashes = values.copy()
    positions = np.arange(n_words)
    for n in range(1, max_n + 1):
        if n > 1:
            hashes[: n_words - n + 1] = hashes[: n_words - n + 1] * _HASH_MULT + values[n - 1 :]
        positions = positions[positions + n <= doc_end[positions]]
        yield n, positions, hashes[positions] + doc_key[positions]


def datatrove_ngram_fractions(words: pa.Array, offsets: np.ndarray, text_len: np.ndarray, top_ns: list[int],
                              dup_ns: list[int]) -> dict[str, np.ndarray]:
    """datatrove's n-gram figures, over len(text):
    top n-gram: characters of the most common n-gram (" ".join of its words) times its count,
    the first to appear on ties, even when it occurs once (documents shorter than n: 0);
    duplicate n-grams: a left-to-right walk that, at an n-gram seen before, adds its characters
    ("".join of its words) and jumps n words ahead, otherwise records it and steps one word.
    The walk is sequential, so it runs in Python, but only over the positions whose n-gram
    occurs more than once in its document (every other position is a first sight)."""
    n_docs = len(offsets) - 1
    out = {f"top_{n}_gram": np.zeros(n_docs) for n in top_ns}
    out.update({f"dup_{n}_gram": np.zeros(n_docs) for n in dup_ns})
    max_n = max(top_ns + dup_ns, default=0)
    if len(words) == 0 or max_n == 0:
        return out
    word_len = lengths(words)
    char_cs = np.zeros(len(words) + 1, np.int64)
    np.cumsum(word_len, out=char_cs[1:])
    doc = segment_ids(offsets)
    for n, positions, keys in _ngram_keys(words, offsets, max_n):
        if len(positions) == 0:
            break
        if n not in top_ns and n not in dup_ns:
            continue
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        occurrences = counts[inverse]
        chars = char_cs[positions + n] - char_cs[positions]
        pos_doc = doc[positions]
        if n in top_ns:
            best = np.zeros(n_docs, np.int64)
            np.maximum.at(best, pos_doc, occurrences)
            top = np.flatnonzero(occurrences == best[pos_doc])
            docs, first = np.unique(pos_doc[top], return_index=True)  # positions ascend: the first to appear
            value = np.zeros(n_docs)
            value[docs] = best[docs] * (chars[top[first]] + n - 1)
            out[f"top_{n}_gram"] = safe_div(value, text_len)
        if n in dup_ns:
            rep = np.flatnonzero(occurrences > 1)
            walked = _walk_duplicates(n, positions[rep], inverse[rep], chars[rep], pos_doc[rep], n_docs)
            out[f"dup_{n}_gram"] = safe_div(walked, text_len)
    return out


def _walk_duplicates(n: int, positions: np.ndarray, keys: np.ndarray, chars: np.ndarray, docs: np.ndarray,
                     n_docs: int) -> np.ndarray:
    """Characters of the repeats datatrove's walk meets, per document (inputs: the repeating
    positions in ascending order, with their n-gram key, characters and document)."""
    total = np.zeros(n_docs, np.int64)
    seen: set[int] = set()
    current, skip_to, acc = -1, -1, 0
    for pos, key, length, d in zip(positions.tolist(), keys.tolist(), chars.tolist(), docs.tolist()):
        if d != current:
            if current >= 0:
                total[current] = acc
            current, skip_to, acc = d, -1, 0
            seen.clear()
        if pos < skip_to:
            continue
        if key in seen:
            acc += length
            skip_to = pos + n
        else:
            seen.add(key)
    if current >= 0:
        total[current] = acc
    return total


ENGLISH_STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
BULLETS = ("•", "-", "*", "‣", "⁃", "◦", "▪", "●", "■", "–", "—")
ELLIPSES = ("...", "…")
_PUNCT_TRIM = "\"'()[]{}<>.,;:!?¿¡«»“”‘’„‚‹›`*_~-—–…/\\|"


class GopherQuality(Step):
    name = "gopher_quality"

    def __init__(
        self,
        min_words: int = 50,
        max_words: int = 100_000,
        min_mean_word_length: float = 3,
        max_mean_word_length: float = 10,
        max_symbol_word_ratio: float = 0.1,
        max_bullet_lines_ratio: float = 0.9,
        max_ellipsis_lines_ratio: float = 0.3,
        min_alpha_words_ratio: float = 0.8,
        min_stop_words: int = 2,
        stop_words: dict[str, list[str]] | None = None,
        default_language: str = "en",
        reference: str = "paper",
        keep_scores: bool = False,
    ):
        super().__init__()
        self.reference = check_reference(self.name, reference)
        self.min_words = min_words
        self.max_words = max_words
        self.min_mean_word_length = min_mean_word_length
        self.max_mean_word_length = max_mean_word_length
        self.max_symbol_word_ratio = max_symbol_word_ratio
        self.max_bullet_lines_ratio = max_bullet_lines_ratio
        self.max_ellipsis_lines_ratio = max_ellipsis_lines_ratio
        self.min_alpha_words_ratio = min_alpha_words_ratio
        self.min_stop_words = min_stop_words
        given = stop_words or {"en": list(ENGLISH_STOP_WORDS)}
        self.stop_words = {lang: sorted({w.lower() for w in ws}) for lang, ws in given.items()}
        self.stop_words_exact = {lang: sorted(set(ws)) for lang, ws in given.items()}  # datatrove: case-sensitive
        self.default_language = default_language
        self.keep_scores = keep_scores

    def scores(self, texts: pa.Array, languages: pa.Array | None) -> dict[str, np.ndarray]:
        if self.reference == "datatrove":
            return self._datatrove_scores(texts)
        n_docs = len(texts)
        tokens, t_off = split_words(texts)
        is_word = as_bool(pc.match_substring_regex(tokens, r"[\pL\pN]"))
        tok_len = lengths(tokens)
        n_words = segment_sum(is_word.astype(np.int64), t_off)
        n_tokens = np.diff(t_off)
        alpha_tokens = segment_sum(as_bool(pc.match_substring_regex(tokens, r"\pL")).astype(np.int64), t_off)
        hashes = np.asarray(pc.count_substring(texts, "#"), np.int64)
        ellipses = np.asarray(pc.count_substring(texts, "..."), np.int64) + np.asarray(pc.count_substring(texts, "…"), np.int64)

        lines, l_off = split(texts, "\n")
        stripped_left = pc.utf8_ltrim_whitespace(lines)
        nonblank = lengths(stripped_left) > 0
        bullet = np.zeros(len(lines), bool)
        for b in BULLETS:
            bullet |= as_bool(pc.starts_with(stripped_left, b))
        stripped_right = pc.utf8_rtrim_whitespace(lines)
        ellipsis_end = np.zeros(len(lines), bool)
        for e in ELLIPSES:
            ellipsis_end |= as_bool(pc.ends_with(stripped_right, e))
        n_lines = segment_sum(nonblank.astype(np.int64), l_off)

        return {
            "words": n_words.astype(np.float64),
            "mean_word_length": safe_div(segment_sum(np.where(is_word, tok_len, 0), t_off), n_words),
            "hash_ratio": safe_div(hashes, n_words),
            "ellipsis_ratio": safe_div(ellipses, n_words),
            "bullet_lines_ratio": safe_div(segment_sum((bullet & nonblank).astype(np.int64), l_off), n_lines),
            "ellipsis_lines_ratio": safe_div(segment_sum((ellipsis_end & nonblank).astype(np.int64), l_off), n_lines),
            "alpha_words_ratio": safe_div(alpha_tokens, n_tokens),
            "stop_words": self._stop_word_counts(tokens, t_off, languages, n_docs),
        }

    def _datatrove_scores(self, texts: pa.Array) -> dict[str, np.ndarray]:
        """datatrove 0.10.1's GopherQualityFilter: spaCy words; a word made only of its
        PUNCTUATION_SET characters is a symbol (left out of the count and the mean length, kept
        in the hash/ellipsis and alphabetic ratios); lines are str.splitlines() with blank ones
        counted; bullets are only "•" and "-"; stop words are matched exactly (case-sensitive),
        the default language's list for every document."""
        from pipeline.steps.spacy_words import spacy_words

        n_docs = len(texts)
        words, w_off = spacy_words(texts)
        n_tokens = np.diff(w_off)
        symbol = as_bool(pc.match_substring_regex(words, f"^[{char_class(DATATROVE_PUNCTUATION)}]+$"))
        word_len = lengths(words)
        n_words = segment_sum((~symbol).astype(np.int64), w_off)
        mean_len = np.full(n_docs, np.nan)
        has = n_words > 0
        mean_len[has] = segment_sum(np.where(symbol, 0, word_len), w_off)[has] / n_words[has]
        alpha = segment_sum(as_bool(pc.match_substring_regex(words, r"\pL")).astype(np.int64), w_off)
        hashes = np.asarray(pc.count_substring(texts, "#"), np.int64)
        ellipses = np.asarray(pc.count_substring(texts, "..."), np.int64) + np.asarray(pc.count_substring(texts, "…"), np.int64)

        lines, l_off = split(texts, LINE_BREAKS, regex=True)
        n_lines = splitlines_count(texts, l_off)
        left = py_strip(lines, "left")
        bullet = as_bool(pc.starts_with(left, "•")) | as_bool(pc.starts_with(left, "-"))
        right = py_strip(lines, "right")
        ellipsis_end = as_bool(pc.ends_with(right, "...")) | as_bool(pc.ends_with(right, "…"))

        stop = self.stop_words_exact.get(self.default_language)
        if stop:
            which = np.asarray(pc.fill_null(pc.index_in(words, value_set=pa.array(stop, words.type)), -1), np.int64)
            hit = which >= 0
            pairs = np.unique(segment_ids(w_off)[hit] * len(stop) + which[hit])
            stop_count = np.bincount(pairs // len(stop), minlength=n_docs).astype(np.float64)
        else:
            stop_count = np.full(n_docs, np.nan)
        return {
            "words": n_words.astype(np.float64),
            "mean_word_length": mean_len,
            "hash_ratio": safe_div(hashes, n_tokens),
            "ellipsis_ratio": safe_div(ellipses, n_tokens),
            "bullet_lines_ratio": safe_div(segment_sum(bullet.astype(np.int64), l_off), n_lines),
            "ellipsis_lines_ratio": safe_div(segment_sum(ellipsis_end.astype(np.int64), l_off), n_lines),
            "alpha_words_ratio": safe_div(alpha, n_tokens),
            "stop_words": stop_count,
        }

    def _stop_word_counts(self, tokens, offsets, languages, n_docs) -> np.ndarray:
        """Distinct stop words of the document's language found; NaN where the language has no list."""
        langs = np.array([self.default_language] * n_docs, dtype=object) if languages is None else np.array(
            pc.fill_null(languages, self.default_language).to_pylist(), dtype=object)
        result = np.full(n_docs, np.nan)
        cleaned = None
        for lang, words in self.stop_words.items():
            docs = langs == lang
            if not docs.any():
                continue
            if cleaned is None:
                cleaned = pc.utf8_lower(pc.utf8_trim(tokens, _PUNCT_TRIM))
            which = np.asarray(pc.fill_null(pc.index_in(cleaned, value_set=pa.array(words, cleaned.type)), -1), np.int64)
            hit = which >= 0
            tok_doc = segment_ids(offsets)
            pairs = np.unique(tok_doc[hit] * len(words) + which[hit])
            counts = np.bincount(pairs // len(words), minlength=n_docs)
            result[docs] = counts[docs]
        return result

    def annotate(self, table):
        texts = text_column(table)
        langs = table.column("language") if "language" in table.column_names else None
        if isinstance(langs, pa.ChunkedArray):
            langs = langs.combine_chunks()
        s = self.scores(texts, langs)
        stop = s["stop_words"]
        rules = [
            ("min_words", s["words"] < self.min_words),
            ("max_words", s["words"] > self.max_words),
            ("min_mean_word_length", s["mean_word_length"] < self.min_mean_word_length),
            ("max_mean_word_length", s["mean_word_length"] > self.max_mean_word_length),
            ("hash_ratio", s["hash_ratio"] > self.max_symbol_word_ratio),
            ("ellipsis_ratio", s["ellipsis_ratio"] > self.max_symbol_word_ratio),
            ("bullet_lines", s["bullet_lines_ratio"] > self.max_bullet_lines_ratio),
            ("ellipsis_lines", s["ellipsis_lines_ratio"] > self.max_ellipsis_lines_ratio),
            ("alpha_words", s["alpha_words_ratio"] < self.min_alpha_words_ratio),
            ("stop_words", ~np.isnan(stop) & (np.nan_to_num(stop, nan=0) < self.min_stop_words)),
        ]
        if self.keep_scores:
            table = with_columns(table, {f"{self.name}_{k}": v.astype(np.float32) for k, v in s.items()})
        return table, first_reason(table.num_rows, rules)
