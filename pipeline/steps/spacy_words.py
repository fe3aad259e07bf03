"""datatrove 0.10's English words for a whole Arrow batch: spaCy's blank English tokenizer
(`spacy.blank("en")`), whitespace tokens dropped, which every datatrove quality filter counts.

Why this is exact and cheap: spaCy first cuts the text where Python's `str.isspace` changes,
then splits each whitespace-free span by its prefix/suffix/infix rules and special cases, on
its own. So a document's words are its whitespace-separated spans' pieces, in order, and each
distinct span needs tokenizing once: a span of letters only that is no special case is its own
piece; the rest go through spaCy once per process (kept in a bounded cache). The pieces are
spread back over the documents with Arrow takes, no per-document loop. Checked against
datatrove's per-document tokenization on the whole web sample: identical words everywhere.

spaCy strips a span's affixes one at a time, searching the rest each time: its cost grows with
length x affixes (a megabyte of brackets would take hours). A span longer than
`MAX_SPAN_CHARS`, or whose length times its count of non-alphanumeric characters exceeds
`MAX_SPAN_COST`, stays one word instead (on the web sample: 4 spans of JSON, in 1 page).
Distinct spans cost spaCy ~40-400 µs each, so hostile text of distinct punctuation-heavy
spans runs at ~50-250 s per 5 MB in this reading (linear, bounded per span); the `paper`
reading has no such cost.
"""

from __future__ import annotations

import functools
import re
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.steps.text import as_bool, lengths, split_words

_WHITESPACE_RUNS = re.compile(r"(\s+)")  # Python's \s is str.isspace(), as spaCy's split
MAX_SPAN_CHARS = 1000
MAX_SPAN_COST = 100_000  # length x non-alphanumeric characters
_CACHE_CHARS = 64 << 20  # cached span characters before the cache starts afresh


class _SpacyEnglish:
    def __init__(self) -> None:
        try:
            import spacy
        except ImportError as exc:  # a runtime dependency; this names what needs it
            raise ImportError("reference: datatrove needs spaCy (pip install spacy), datatrove's word tokenizer") from exc
        self.nlp = spacy.blank("en")
        sentencizer = self.nlp.add_pipe("sentencizer")  # datatrove splits sentences with it (C4's count)
        self.sentence_chars = frozenset(c for c in sentencizer.punct_chars if len(c) == 1)
        if len(self.sentence_chars) != len(sentencizer.punct_chars):  # the prefilter in c4.py assumes single characters
            raise RuntimeError("spaCy's sentencizer has multi-character sentence marks; this spaCy version is not supported")
        self.special = pa.array(sorted(self.nlp.tokenizer.rules), pa.large_string())
        self.cache: dict[str, tuple[str, ...]] = {}
        self._punct: dict[str, bool] = {}
        self.cached_chars = 0

    def pieces(self, spans: list[str]) -> list[tuple[str, ...]]:
        """spaCy's tokens of each whitespace-free span."""
        if self.cached_chars > _CACHE_CHARS:
            self.cache.clear()
            self.cached_chars = 0
        new = [s for s in dict.fromkeys(spans) if s not in self.cache]
        if new:
            tokenizer = self.nlp.tokenizer
            with self.nlp.memory_zone():  # spaCy's vocabulary would otherwise grow with the corpus
                for span in new:
                    self.cache[span] = tuple(t.text for t in tokenizer(span))
            self.cached_chars += sum(map(len, new))
        return [self.cache[s] for s in spans]

    def sentences(self, lines: list[str]) -> list[int]:
        """How many sentences spaCy's sentencizer finds in each line (datatrove's C4 count),
        from the cached span tokens: the sentencizer starts a sentence at a token that follows
        a token in its punct_chars and is neither punctuation (every character in a Unicode P*
        category) nor in punct_chars itself. A run of whitespace is a token too, unless it is
        one plain space (spaCy attaches that to the token before)."""
        out = []
        marks = self.sentence_chars
        is_punct = self.is_punct
        for line in lines:
            parts = _WHITESPACE_RUNS.split(line)
            spans = parts[0::2]
            pieces = self.pieces([p for p in spans if p])
            count, seen_period, k = 1, False, 0
            for j, part in enumerate(parts):
                if j % 2:  # a whitespace run
                    tokens = () if part == " " else (part,)
                elif part:
                    tokens = pieces[k]
                    k += 1
                else:
                    continue
                for text in tokens:
                    in_marks = text in marks
                    if seen_period and not in_marks and not is_punct(text):
                        count += 1
                        seen_period = False
                    elif in_marks:
                        seen_period = True
            out.append(count)
        return out

    def is_punct(self, text: str) -> bool:
        """spaCy's IS_PUNCT lexical attribute."""
        got = self._punct.get(text)
        if got is None:
            got = self._punct[text] = all(unicodedata.category(c).startswith("P") for c in text)
        return got


@functools.lru_cache(maxsize=1)
def english() -> _SpacyEnglish:
    return _SpacyEnglish()


def clear_cache() -> None:
    """Forget the tokenized spans (benchmarks time each step from a cold cache)."""
    tok = english()
    tok.cache.clear()
    tok.cached_chars = 0


def spacy_words(texts: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(words, offsets) as `split_words` gives them, tokenized as datatrove does."""
    spans, span_offsets = split_words(texts)
    if len(spans) == 0:
        return spans, span_offsets
    encoded = pc.dictionary_encode(spans)
    distinct = encoded.dictionary
    span_code = np.asarray(encoded.indices, dtype=np.int64)
    tok = english()
    simple = as_bool(pc.match_substring_regex(distinct, r"^\pL+$")) & ~as_bool(pc.is_in(distinct, value_set=tok.special))
    span_len = lengths(distinct)
    costly = (span_len > MAX_SPAN_CHARS) | (span_len * np.asarray(pc.count_substring_regex(distinct, r"[^\pL\pN]"), np.int64) > MAX_SPAN_COST)
    simple |= costly
    hard = np.flatnonzero(~simple)
    hard_pieces = tok.pieces(distinct.take(pa.array(hard)).to_pylist())

    # every distinct span's pieces: values = distinct spans, then the hard spans' pieces
    piece_count = np.ones(len(distinct), np.int64)
    piece_count[hard] = [len(p) for p in hard_pieces]
    hard_values = pa.array([w for p in hard_pieces for w in p], pa.large_string())
    first_piece = np.zeros(len(distinct), np.int64)  # where each distinct span's pieces start in `values`
    first_piece[simple] = np.flatnonzero(simple)
    hard_starts = np.zeros(len(hard), np.int64)
    np.cumsum(piece_count[hard][:-1], out=hard_starts[1:])
    first_piece[hard] = len(distinct) + hard_starts
    values = pa.concat_arrays([distinct, hard_values])

    # each span of each document: its pieces, in order
    count = piece_count[span_code]
    out_start = np.zeros(len(count) + 1, np.int64)
    np.cumsum(count, out=out_start[1:])
    take = np.repeat(first_piece[span_code] - out_start[:-1], count) + np.arange(out_start[-1])
    return values.take(pa.array(take)), out_start[span_offsets]

