"""FineWeb's own quality rules (Penedo et al. 2024, "The FineWeb Datasets", section 3.3.4;
the published filter that produced FineWeb), over the non-blank lines split on "\\n":

- line_punct_ratio: fewer than 12 % of lines end in sentence-terminal punctuation (the line
  as it is, trailing spaces included; Unicode's Sentence_Terminal characters);
- short_line_ratio: more than 67 % of lines are at most 30 characters long;
- char_dup_ratio: more than 1 % of the characters (newlines not counted) sit in lines that
  repeat an earlier line;
- list_ratio: more than 0.3 newlines per word (whitespace-separated tokens).

`reference: datatrove` is datatrove 0.10.1's FineWebQualityFilter: its TERMINAL_PUNCTUATION
set, blank lines by `str.strip()`, and spaCy words for list_ratio (docs/filters.md).
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from pipeline.steps.base import Step
from pipeline.steps.text import (
    DATATROVE_TERMINALS,
    SENTENCE_TERMINALS,
    check_reference,
    py_strip,
    duplicate_stats,
    ends_with_any,
    first_reason,
    lengths,
    safe_div,
    segment_sum,
    split,
    split_words,
    text_column,
    with_columns,
)


class FineWebQuality(Step):
    name = "fineweb"

    def __init__(
        self,
        line_punct_thr: float = 0.12,
        line_punct_exclude_zero: bool = False,
        short_line_thr: float = 0.67,
        short_line_length: int = 30,
        char_duplicates_ratio: float = 0.01,
        new_line_ratio: float = 0.3,
        reference: str = "paper",
        keep_scores: bool = False,
    ):
        super().__init__()
        self.reference = check_reference(self.name, reference)
        self.line_punct_thr = line_punct_thr
        self.line_punct_exclude_zero = line_punct_exclude_zero
        self.short_line_thr = short_line_thr
        self.short_line_length = short_line_length
        self.char_duplicates_ratio = char_duplicates_ratio
        self.new_line_ratio = new_line_ratio
        self.keep_scores = keep_scores

    def scores(self, texts) -> dict[str, np.ndarray]:
        datatrove = self.reference == "datatrove"
        lines, offsets = split(texts, "\n")
        line_len = lengths(lines)
        nonblank = lengths(py_strip(lines) if datatrove else pc.utf8_trim_whitespace(lines)) > 0
        n_lines = segment_sum(nonblank.astype(np.int64), offsets)
        punct = ends_with_any(lines, DATATROVE_TERMINALS if datatrove else SENTENCE_TERMINALS) & nonblank
        short = (line_len <= self.short_line_length) & nonblank
        _, dup_chars = duplicate_stats(lines, offsets, line_len, keep=nonblank)
        newlines = np.asarray(pc.count_substring(texts, "\n"), np.int64)
        if datatrove:  # datatrove divides by spaCy words (pipeline/steps/spacy_words.py)
            from pipeline.steps.spacy_words import spacy_words

            words = np.diff(spacy_words(texts)[1])
        else:
            words = np.diff(split_words(texts)[1])
        list_ratio = safe_div(newlines, words)
        list_ratio[(words == 0) & (newlines > 0)] = np.inf
        return {
            "lines": n_lines.astype(np.float64),
            "line_punct_ratio": safe_div(segment_sum(punct.astype(np.int64), offsets), n_lines),
            "short_line_ratio": safe_div(segment_sum(short.astype(np.int64), offsets), n_lines),
            "char_dup_ratio": safe_div(dup_chars, lengths(texts) - newlines),
            "list_ratio": list_ratio,
        }

    def annotate(self, table):
        s = self.scores(text_column(table))
        punct = s["line_punct_ratio"]
        rules = [
            ("empty", s["lines"] == 0),
            ("line_punct_ratio", (punct < self.line_punct_thr) & ~((punct == 0) & self.line_punct_exclude_zero)),
            ("short_line_ratio", s["short_line_ratio"] > self.short_line_thr),
            ("char_dup_ratio", s["char_dup_ratio"] > self.char_duplicates_ratio),
            ("list_ratio", s["list_ratio"] > self.new_line_ratio),
        ]
        if self.keep_scores:
            table = with_columns(table, {f"{self.name}_{k}": v.astype(np.float32) for k, v in s.items() if k != "lines"})
        return table, first_reason(table.num_rows, rules)
