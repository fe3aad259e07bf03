"""C4's page cleaning (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a
Unified Text-to-Text Transformer", section 2.2), in the order of its reference implementation
(tensorflow_datasets `c4_utils.clean_page`), per `str.splitlines()` line stripped as
`str.strip()` does:

1. a line holding a word longer than 1000 characters is removed;
2. citation markers ([1], [edit], [citation needed]) are removed from the line;
3. a line not ending in an end mark (or ending in "...") is removed;
4. a line with too few words is removed;
5. "lorem ipsum" in a surviving line drops the page;
6. a line mentioning "javascript" is removed;
7. a curly bracket in a surviving line drops the page;
8. a line with a policy phrase (terms of use, privacy policy, cookies ...) is removed;
and a page left with too few sentences is dropped. The kept lines, joined with newlines and
stripped, become the new text (`rewrite: false` keeps the text and only applies the page drops).

`reference: paper` follows tfds: end marks . ? ! ", at least 5 words per line counted after
removing citations, at least 3 sentences; tfds counts NLTK punkt sentences, here a sentence
boundary inside a line is terminal punctuation (plus closing quotes/brackets) followed by
whitespace and an upper-case letter or digit, and every kept line ends one sentence.
`reference: datatrove` is datatrove 0.10.1's C4QualityFilter: end marks . ? ! " ', at least 3
words counted before removing citations, at least 5 sentences by spaCy's sentencizer.

`C4BadWords` is C4's bad-words rule (off by default in the chain).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.steps.base import Step
from pipeline.steps.text import (
    LINE_BREAKS,
    PY_WHITESPACE,
    as_bool,
    char_class,
    check_reference,
    first_reason,
    lengths,
    py_strip,
    py_word_counts,
    replace_text,
    segment_ids,
    segment_sum,
    split,
    text_column,
    with_columns,
)
CITATION = r"\[\d*\]|\[edit\]|\[citation needed\]"
END_MARKS = r'[.?!"\']$'
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
INNER_SENTENCE_END = r"[.?!]+[\"'”’)\]]*\s+[\"'“‘(\[]*[\p{Lu}\p{Lt}\pN]"


# What differs between the two readings (docs/filters.md): tfds's c4_utils (the code that
# built C4) keeps lines of >= 5 words, pages of >= 3 punkt sentences, end marks . ? ! " and
# counts words after removing citations; datatrove 0.10.1 keeps lines of >= 3 words, pages
# of >= 5 spaCy-sentencizer sentences, also accepts ' and counts words before citations.
READINGS = {
    "paper": {"min_sentences": 3, "min_words_per_line": 5, "end_marks": r'[.?!"]$', "words_after_citations": True},
    "datatrove": {"min_sentences": 5, "min_words_per_line": 3, "end_marks": r'[.?!"\']$', "words_after_citations": False},
}


class C4Quality(Step):
    name = "c4"

    def __init__(
        self,
        min_sentences: int | None = None,
        min_words_per_line: int | None = None,
        max_word_length: int = 1000,
        remove_citations: bool = True,
        require_terminal_punct: bool = True,
        filter_lorem_ipsum: bool = True,
        filter_javascript: bool = True,
        filter_curly_bracket: bool = True,
        filter_policy: bool = True,
        rewrite: bool = True,
        reference: str = "paper",
        keep_scores: bool = False,
    ):
        super().__init__()
        self.reference = check_reference(self.name, reference)
        reading = READINGS[reference]
        self.min_sentences = reading["min_sentences"] if min_sentences is None else min_sentences
        self.min_words_per_line = reading["min_words_per_line"] if min_words_per_line is None else min_words_per_line
        self.end_marks = reading["end_marks"]
        self.words_after_citations = reading["words_after_citations"]
        self.max_word_length = max_word_length
        self.remove_citations = remove_citations
        self.require_terminal_punct = require_terminal_punct
        self.filter_lorem_ipsum = filter_lorem_ipsum
        self.filter_javascript = filter_javascript
        self.filter_curly_bracket = filter_curly_bracket
        self.filter_policy = filter_policy
        self.rewrite = rewrite
        self.keep_scores = keep_scores

    def annotate(self, table):
        texts = text_column(table)
        n_docs = len(texts)
        raw, offsets = split(texts, LINE_BREAKS, regex=True)
        lines = py_strip(raw)  # Python's str.strip(), as both references
        lines, offsets, blank_doc = self._without_blank_lines(lines, offsets)
        n_lines = len(lines)
        line_doc = segment_ids(offsets)
        removed = {}  # why lines went, for the counters

        alive = np.ones(n_lines, bool)
        if self.max_word_length > 0:
            long_word = self._has_long_word(lines)
            removed["too_long_word"] = long_word & alive
            alive &= ~long_word
        words_per_line = None if self.words_after_citations else py_word_counts(lines)
        if self.remove_citations:
            lines = pc.replace_substring_regex(lines, CITATION, "")
        if words_per_line is None:
            words_per_line = py_word_counts(lines)
        if self.require_terminal_punct:
            ok = as_bool(pc.match_substring_regex(lines, self.end_marks)) & ~as_bool(pc.ends_with(lines, "..."))
            removed["no_terminal_punct"] = ~ok & alive
            alive &= ok
        few_words = words_per_line < self.min_words_per_line
        removed["too_few_words"] = few_words & alive
        alive &= ~few_words

        lower = pc.utf8_lower(lines)
        lorem = alive & as_bool(pc.match_substring(lower, "lorem ipsum")) if self.filter_lorem_ipsum else np.zeros(n_lines, bool)
        if self.filter_javascript:
            js = as_bool(pc.match_substring(lower, "javascript"))
            removed["javascript"] = js & alive
            alive &= ~js
        curly = alive & as_bool(pc.match_substring(lines, "{")) if self.filter_curly_bracket else np.zeros(n_lines, bool)
        if self.filter_policy:
            policy = as_bool(pc.match_substring_regex(lower, "|".join(POLICY_PHRASES)))
            removed["policy"] = policy & alive & ~curly
            alive &= ~policy

        # the page drops: whichever of lorem ipsum / curly bracket the reference meets first
        # (on one line, lorem ipsum is checked first)
        first_lorem = _first_index(line_doc, lorem, n_docs, n_lines)
        first_curly = _first_index(line_doc, curly, n_docs, n_lines)
        kept = alive & ~curly & ~lorem
        sentences = segment_sum(np.where(kept, self._sentences(lines, kept), 0), offsets)
        rules = [
            ("lorem_ipsum", (first_lorem < n_lines) & (first_lorem <= first_curly)),
            ("curly_bracket", (first_curly < n_lines) & (first_curly < first_lorem)),
            ("min_sentences", sentences < self.min_sentences),
        ]
        reasons = first_reason(n_docs, rules)
        dropped_doc = np.zeros(n_docs, bool) if reasons is None else ~as_bool(pc.is_null(reasons))
        for why, mask in removed.items():
            count = int(np.count_nonzero(mask & ~dropped_doc[line_doc]))
            if count:
                self.stats.counters[f"lines_removed:{why}"] += count
        if blank_count := int(np.count_nonzero(~dropped_doc[blank_doc])):
            blank_rule = "no_terminal_punct" if self.require_terminal_punct else "too_few_words"
            self.stats.counters[f"lines_removed:{blank_rule}"] += blank_count

        if self.rewrite:
            kept_lines = lines.filter(pa.array(kept))
            new_offsets = np.zeros(n_docs + 1, np.int64)
            np.cumsum(segment_sum(kept.astype(np.int64), offsets), out=new_offsets[1:])
            joined = pc.binary_join(pa.LargeListArray.from_arrays(pa.array(new_offsets), kept_lines), pa.scalar("\n", pa.large_string()))
            table = replace_text(table, py_strip(joined))
        if self.keep_scores:
            table = with_columns(table, {f"{self.name}_sentences": sentences.astype(np.int32)})
        return table, reasons

    def _without_blank_lines(self, lines: pa.Array, offsets: np.ndarray):
        """Lines that are empty once stripped, dropped before the per-line rules (which would
        remove them: no terminal punctuation, no words), so that a page of a million newlines
        costs what its text costs. Returns the other lines, their offsets, and the document of
        each blank line (counted under the rule that would have removed it)."""
        if not (self.require_terminal_punct or self.min_words_per_line > 0):
            return lines, offsets, np.zeros(0, np.int64)
        blank = lengths(lines) == 0
        if not blank.any():
            return lines, offsets, np.zeros(0, np.int64)
        blank_doc = segment_ids(offsets)[blank]
        new_offsets = np.zeros_like(offsets)
        np.cumsum(segment_sum((~blank).astype(np.int64), offsets), out=new_offsets[1:])
        return lines.filter(pa.array(~blank)), new_offsets, blank_doc

    def _sentences(self, lines: pa.Array, kept: np.ndarray) -> np.ndarray:
        """Sentences per line. datatrove: spaCy's sentencizer, run only on kept lines that
        hold a sentence-ending character before their last non-space character (the others
        are one sentence). paper: terminal punctuation followed by space and a capital or
        digit inside the line, plus the line's end (tfds uses NLTK punkt; see docs)."""
        if self.reference == "paper":
            return 1 + np.asarray(pc.count_substring_regex(lines, INNER_SENTENCE_END), np.int64)
        from pipeline.steps.spacy_words import english

        out = np.ones(len(lines), np.int64)
        tok = english()
        punct = char_class(frozenset(tok.sentence_chars))
        maybe = kept & as_bool(pc.match_substring_regex(lines, f"[{punct}].*[^{punct}{char_class(PY_WHITESPACE)}]"))
        idx = np.flatnonzero(maybe)
        if len(idx):
            out[idx] = tok.sentences(lines.take(pa.array(idx)).to_pylist())
        return out

    def _has_long_word(self, lines: pa.Array) -> np.ndarray:
        # Only lines longer than the limit can hold such a word: check just those in Python
        # (RE2 caps counted repetitions at 1000, so no single regex does it).
        out = np.zeros(len(lines), bool)
        candidates = np.flatnonzero(lengths(lines) > self.max_word_length)
        for i in candidates:
            out[i] = any(len(w) > self.max_word_length for w in lines[int(i)].as_py().split())
        return out


def _first_index(line_doc: np.ndarray, mask: np.ndarray, n_docs: int, n_lines: int) -> np.ndarray:
    """Per document, the index of its first line where mask holds (n_lines + 1 when none)."""
    first = np.full(n_docs, n_lines + 1, np.int64)
    hits = np.flatnonzero(mask)
    np.minimum.at(first, line_doc[hits], hits)
    return first


# C4's bad-words rule (tfds c4_utils.get_badwords_filter_fn; datatrove's C4BadWordsFilter):
# lists from LDNOOBW, one per language. Words that are common sub-words in languages written
# without spaces are allowed (each filtered > 10 % of their language's documents), taken out
# of every list as datatrove does.
BADWORDS_ALLOWLIST = {"ja": {"sm", "グロ", "女の子"}, "zh": {"性"}}
NO_BOUNDARY_LANGUAGES = ("ja", "th", "zh")  # matched anywhere, not only between non-word characters
_NOT_WORD = r"[^\pL\pN_]"  # Python's \W for str patterns (RE2's \W is ASCII-only)


class C4BadWords(Step):
    """Drop a page holding a word of its language's LDNOOBW list (lower-cased text; whole
    words, except in ja/th/zh). `keep_fraction` keeps that share of such pages at random
    (seeded). Documents take their language from the `language` column (null:
    `default_language`); a language without a list is kept and counted, or refused with
    `fail_on_missing_language`."""

    name = "c4_badwords"

    def __init__(self, lists_dir: str | None = None, default_language: str = "en", keep_fraction: float = 0.0,
                 seed: int | None = None, fail_on_missing_language: bool = False):
        super().__init__()
        from pipeline.settings import shared_dir

        self.lists_dir = Path(lists_dir) if lists_dir else shared_dir() / "toxicity" / "ldnoobw"
        if not self.lists_dir.is_dir():
            raise FileNotFoundError(f"c4_badwords: word lists not found: {self.lists_dir} (set lists_dir or $TOKENMILL_SHARED)")
        if not 0.0 <= keep_fraction <= 1.0:
            raise ValueError(f"c4_badwords: keep_fraction must be within [0, 1], got {keep_fraction}")
        self.default_language = default_language
        self.keep_fraction = keep_fraction
        self.fail_on_missing_language = fail_on_missing_language
        self.uniform = np.random.default_rng(seed).uniform
        self._patterns: dict[str, str | None] = {}

    def pattern(self, lang: str) -> str | None:
        """The RE2 pattern for a language's list (None: no list)."""
        if lang not in self._patterns:
            path = self.lists_dir / lang
            if "/" in lang or lang.startswith(".") or not path.is_file():
                if self.fail_on_missing_language:
                    raise ValueError(f"c4_badwords: no bad-words list for language {lang!r} in {self.lists_dir}")
                self._patterns[lang] = None
                return None
            words = {line.strip() for line in path.read_text(encoding="utf-8").splitlines()}
            for allowed in BADWORDS_ALLOWLIST.values():
                words -= allowed
            words.discard("")
            self.stats.files[f"badwords:{lang}"] = str(path)
            alternation = "|".join(re.escape(w) for w in sorted(words))
            self._patterns[lang] = (alternation if lang in NO_BOUNDARY_LANGUAGES
                                    else f"(?:{_NOT_WORD}|^)(?:{alternation})(?:{_NOT_WORD}|$)")
        return self._patterns[lang]

    def annotate(self, table):
        texts = text_column(table)
        n = len(texts)
        if "language" in table.column_names:
            langs = table.column("language")
            langs = pc.fill_null(langs.combine_chunks() if isinstance(langs, pa.ChunkedArray) else langs, self.default_language)
        else:
            langs = pa.array([self.default_language] * n, pa.string())
        found = np.zeros(n, bool)
        lower = None
        for lang in pc.unique(langs).to_pylist():
            rows = np.flatnonzero(as_bool(pc.equal(langs, lang)))
            pattern = self.pattern(lang)
            if pattern is None:
                self.stats.counters[f"missing_language:{lang}"] += len(rows)
                continue
            if lower is None:
                lower = pc.utf8_lower(texts)
            found[rows] = as_bool(pc.match_substring_regex(lower.take(pa.array(rows)), pattern))
        drop = found.copy()
        if self.keep_fraction > 0:
            for row in np.flatnonzero(found):  # one draw per page with a bad word, in order (as datatrove)
                if self.uniform() < self.keep_fraction:
                    drop[row] = False
        self.stats.counters["pages_with_badwords"] += int(found.sum())
        return table, first_reason(n, [("badwords", drop)])
