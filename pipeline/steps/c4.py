"""C4's page cleaning (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a
Unified Text-to-Text Transformer", section 2.2), in the order of its reference implementation
(tensorflow_datasets `c4_utils.clean_page`), per stripped line:

1. a line holding a word longer than 1000 characters is removed;
2. citation markers ([1], [edit], [citation needed]) are removed from the line;
3. a line not ending in . ? ! " ' (or ending in "...") is removed;
4. a line with fewer than 3 words is removed;
5. "lorem ipsum" in a surviving line drops the page;
6. a line mentioning "javascript" is removed;
7. a curly bracket in a surviving line drops the page;
8. a line with a policy phrase (terms of use, privacy policy, cookies ...) is removed;
and a page left with fewer than 5 sentences is dropped. The kept lines, joined with newlines,
become the new text (`rewrite: false` keeps the text and only applies the page drops).

Sentences: the reference counts NLTK punkt sentences; here a sentence boundary inside a line
is terminal punctuation (plus closing quotes/brackets) followed by whitespace and an
upper-case letter or digit, and every kept line ends one sentence.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.steps.base import Step
from pipeline.steps.text import as_bool, first_reason, lengths, replace_text, segment_ids, segment_sum, split, text_column, with_columns

LINE_BREAKS = r"\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x{85}\x{2028}\x{2029}]"  # what str.splitlines() splits on
CITATION = r"\[\d*\]|\[edit\]|\[citation needed\]"
END_MARKS = r'[.?!"\']$'
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
INNER_SENTENCE_END = r"[.?!]+[\"'”’)\]]*\s+[\"'“‘(\[]*[\p{Lu}\p{Lt}\pN]"


class C4Quality(Step):
    name = "c4"

    def __init__(
        self,
        min_sentences: int = 5,
        min_words_per_line: int = 3,
        max_word_length: int = 1000,
        remove_citations: bool = True,
        require_terminal_punct: bool = True,
        filter_lorem_ipsum: bool = True,
        filter_javascript: bool = True,
        filter_curly_bracket: bool = True,
        filter_policy: bool = True,
        rewrite: bool = True,
        keep_scores: bool = False,
    ):
        super().__init__()
        self.min_sentences = min_sentences
        self.min_words_per_line = min_words_per_line
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
        lines = pc.utf8_trim_whitespace(raw)
        n_lines = len(lines)
        line_doc = segment_ids(offsets)
        removed = {}  # why lines went, for the counters

        alive = np.ones(n_lines, bool)
        if self.max_word_length > 0:
            long_word = self._has_long_word(lines)
            removed["too_long_word"] = long_word & alive
            alive &= ~long_word
        words_per_line = np.asarray(pc.list_value_length(pc.utf8_split_whitespace(lines)), np.int64)
        if self.remove_citations:
            lines = pc.replace_substring_regex(lines, CITATION, "")
        if self.require_terminal_punct:
            ok = as_bool(pc.match_substring_regex(lines, END_MARKS)) & ~as_bool(pc.ends_with(lines, "..."))
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
        first_lorem = _first_index(line_doc, lorem, n_docs, n_lines)
        first_curly = _first_index(line_doc, curly, n_docs, n_lines)
        kept = alive & ~curly
        sentences = segment_sum(np.where(kept, 1 + np.asarray(pc.count_substring_regex(lines, INNER_SENTENCE_END), np.int64), 0), offsets)
        rules = [
            ("lorem_ipsum", first_lorem < first_curly),
            ("curly_bracket", first_curly < first_lorem),
            ("min_sentences", sentences < self.min_sentences),
        ]
        reasons = first_reason(n_docs, rules)
        dropped_doc = np.zeros(n_docs, bool) if reasons is None else ~as_bool(pc.is_null(reasons))
        for why, mask in removed.items():
            count = int(np.count_nonzero(mask & ~dropped_doc[line_doc]))
            if count:
                self.stats.counters[f"lines_removed:{why}"] += count

        if self.rewrite:
            kept_lines = lines.filter(pa.array(kept))
            new_offsets = np.zeros(n_docs + 1, np.int64)
            np.cumsum(segment_sum(kept.astype(np.int64), offsets), out=new_offsets[1:])
            joined = pc.binary_join(pa.LargeListArray.from_arrays(pa.array(new_offsets), kept_lines), pa.scalar("\n", pa.large_string()))
            table = replace_text(table, pc.utf8_trim_whitespace(joined))
        if self.keep_scores:
            table = with_columns(table, {f"{self.name}_sentences": sentences.astype(np.int32)})
        return table, reasons

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
