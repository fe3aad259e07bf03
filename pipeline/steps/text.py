"""Vectorised text helpers shared by the filter steps.

Every heuristic works the same way: split the batch's text column once with Arrow (lines,
paragraphs or words become one flat string array plus per-document offsets), compute
per-piece facts with Arrow/numpy, and fold them back to per-document numbers with
`segment_sum`. No per-document Python loop in the hot paths.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Unicode's Sentence_Terminal property (Unicode 16): what counts as "ends in terminal
# punctuation" for FineWeb's line rule. Generated from the Unicode character database.
SENTENCE_TERMINALS = frozenset(
    "\u0021\u002e\u003f\u0589\u061d\u061e\u061f\u06d4\u0700\u0701\u0702\u07f9\u0837\u0839\u083d\u083e\u0964\u0965"
    "\u104a\u104b\u1362\u1367\u1368\u166e\u1735\u1736\u17d4\u17d5\u1803\u1809\u1944\u1945\u1aa8\u1aa9\u1aaa\u1aab"
    "\u1b4e\u1b4f\u1b5a\u1b5b\u1b5e\u1b5f\u1b7d\u1b7e\u1b7f\u1c3b\u1c3c\u1c7e\u1c7f\u2024\u203c\u203d\u2047\u2048"
    "\u2049\u2cf9\u2cfa\u2cfb\u2e2e\u2e3c\u2e53\u2e54\u2e60\u2e61\u3002\ua4ff\ua60e\ua60f\ua6f3\ua6f7\ua876\ua877"
    "\ua8ce\ua8cf\ua92f\ua9c8\ua9c9\uaa5d\uaa5e\uaa5f\uaaf0\uaaf1\uabeb\ufe12\ufe15\ufe16\ufe52\ufe56\ufe57\uff01"
    "\uff0e\uff1f\uff61\U00010a56\U00010a57\U00010f55\U00010f56\U00010f57\U00010f58\U00010f59\U00010f86\U00010f87"
    "\U00010f88\U00010f89\U00011047\U00011048\U000110be\U000110bf\U000110c0\U000110c1\U00011141\U00011142\U00011143"
    "\U000111c5\U000111c6\U000111cd\U000111de\U000111df\U00011238\U00011239\U0001123b\U0001123c\U000112a9\U000113d4"
    "\U000113d5\U0001144b\U0001144c\U000115c2\U000115c3\U000115c9\U000115ca\U000115cb\U000115cc\U000115cd\U000115ce"
    "\U000115cf\U000115d0\U000115d1\U000115d2\U000115d3\U000115d4\U000115d5\U000115d6\U000115d7\U00011641\U00011642"
    "\U0001173c\U0001173d\U0001173e\U00011944\U00011946\U00011a42\U00011a43\U00011a9b\U00011a9c\U00011c41\U00011c42"
    "\U00011ef7\U00011ef8\U00011f43\U00011f44\U00016a6e\U00016a6f\U00016af5\U00016b37\U00016b38\U00016b44\U00016d6e"
    "\U00016d6f\U00016e98\U0001bc9f\U0001da88"
)


# The characters datatrove 0.10 takes as sentence-terminal (FineWeb's line rule): Unicode's
# Sentence_Terminal as of an older Unicode, plus three Khmer signs that are not in it.
DATATROVE_TERMINALS = (SENTENCE_TERMINALS - frozenset(
    "\u1b4e\u1b4f\u1b7f\u2024\u2cf9\u2cfa\u2cfb\u2e60\u2e61\ufe12\ufe15\ufe16"
    "\U000113d4\U000113d5\U00016d6e\U00016d6f"
)) | frozenset("\u17d6\u17d9\u17da")
# datatrove 0.10's PUNCTUATION_SET: a token made only of these is a "symbol" for Gopher's word
# count (note the fullwidth digit one and the C0/C1 controls it holds).
DATATROVE_PUNCTUATION = frozenset(
    "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»"
    + "".join(map(chr, [*range(0, 9), *range(11, 13), *range(13, 32), *range(127, 160)]))
) | DATATROVE_TERMINALS

# What str.splitlines() splits on (C4 and Gopher's bullet/ellipsis lines go by it).
LINE_BREAKS = r"\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x{85}\x{2028}\x{2029}]"

# What Python's str.isspace() holds true (str.split(), str.strip() and spaCy go by it).
PY_WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

# The two readings of the published heuristics (docs/filters.md lists every difference).
REFERENCES = ("paper", "datatrove")


def check_reference(step: str, reference: str) -> str:
    if reference not in REFERENCES:
        raise ValueError(f"{step}: reference must be one of {list(REFERENCES)}, got {reference!r}")
    return reference


# Languages written without spaces between words (lid.176 labels): every rule that counts
# whitespace-separated words (Gopher, C4, FineWeb) reads a whole sentence as one word and drops
# nearly every such page.
UNSPACED_LANGUAGES = ("zh", "ja", "th", "lo", "km", "my", "bo", "wuu", "yue")
WORD_RULE_STEPS = ("gopher_repetition", "gopher_quality", "c4", "fineweb")


def refuse_unspaced_languages(config: dict) -> None:
    """Refuse a chain whose language allow-list admits a language written without spaces
    while word-based rules run: they would silently drop nearly all of its documents."""
    langid = config.get("langid") or {}
    if "langid" not in config.get("order", []) or not langid.get("enabled", True):
        return
    unspaced = sorted(set(langid.get("languages") or []) & set(UNSPACED_LANGUAGES))
    steps = [s for s in WORD_RULE_STEPS if s in config.get("order", []) and (config.get(s) or {}).get("enabled", True)]
    if unspaced and steps:
        raise ValueError(
            f"filter config: langid allows {unspaced}, written without spaces between words, but {steps} count "
            "whitespace-separated words and would drop nearly every such document. Filter these languages in a "
            "separate chain with those steps disabled (enabled: false), or remove them from langid.languages.")


def char_class(chars: frozenset[str]) -> str:
    """An RE2 character class body matching exactly `chars` (every one escaped by code point)."""
    return "".join(f"\\x{{{ord(c):x}}}" for c in sorted(chars))


def py_strip(strings: pa.Array, side: str = "both") -> pa.Array:
    """Python's str.strip() / lstrip() / rstrip() (whitespace as str.isspace() has it)."""
    ws = char_class(PY_WHITESPACE)
    pattern = {"both": f"^[{ws}]+|[{ws}]+$", "left": f"^[{ws}]+", "right": f"[{ws}]+$"}[side]
    return pc.replace_substring_regex(strings, pattern, "")


def py_word_counts(strings: pa.Array) -> np.ndarray:
    """len(s.split()) for each string."""
    return np.asarray(pc.count_substring_regex(strings, f"[^{char_class(PY_WHITESPACE)}]+"), np.int64)


def text_column(table: pa.Table) -> pa.Array:
    """The text column as one contiguous large_string array, nulls as empty strings."""
    col = table.column("text")
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if arr.type != pa.large_string():
        arr = arr.cast(pa.large_string())
    if arr.null_count:
        arr = pc.fill_null(arr, "")
    return arr


def flatten_lists(lists: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(flat values, offsets) of a list array: document d owns values[offsets[d]:offsets[d+1]]."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    offsets = np.asarray(lists.offsets, dtype=np.int64)
    values = lists.flatten()
    return values, offsets - offsets[0]


def split(texts: pa.Array, pattern: str, *, regex: bool = False) -> tuple[pa.Array, np.ndarray]:
    lists = pc.split_pattern_regex(texts, pattern) if regex else pc.split_pattern(texts, pattern)
    return flatten_lists(lists)


def split_words(texts: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Whitespace-separated tokens (Python's str.split), the word of the `paper` reading."""
    return flatten_lists(pc.utf8_split_whitespace(texts))


def segment_sum(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per-document sums of a per-piece array (empty documents sum to 0)."""
    cs = np.zeros(len(values) + 1, dtype=np.float64 if values.dtype.kind == "f" else np.int64)
    np.cumsum(values, out=cs[1:])
    return cs[offsets[1:]] - cs[offsets[:-1]]


def segment_ids(offsets: np.ndarray) -> np.ndarray:
    """The document index of each piece."""
    return np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))


def lengths(strings: pa.Array) -> np.ndarray:
    """Code-point length of each string."""
    return np.asarray(pc.utf8_length(strings), dtype=np.int64)


def as_bool(arr) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False), dtype=bool)


def last_char(strings: pa.Array) -> pa.Array:
    return pc.utf8_slice_codeunits(strings, -1)


def ends_with_any(strings: pa.Array, chars: frozenset[str]) -> np.ndarray:
    return as_bool(pc.is_in(last_char(strings), value_set=pa.array(sorted(chars), pa.large_string())))


def splitlines_count(texts: pa.Array, pieces_offsets: np.ndarray) -> np.ndarray:
    """len(text.splitlines()) from a split on LINE_BREAKS: the split also yields an empty
    last piece after a final line break (and one piece for empty text), splitlines does not."""
    trailing = as_bool(pc.match_substring_regex(texts, f"(?:{LINE_BREAKS})$")) | (lengths(texts) == 0)
    return np.diff(pieces_offsets) - trailing


def duplicate_stats(pieces: pa.Array, offsets: np.ndarray, piece_len: np.ndarray, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per document: how many pieces repeat an earlier identical piece of the same document,
    and how many characters those repeats hold (the first occurrence is not a duplicate).
    `keep` restricts which pieces take part (e.g. non-blank lines)."""
    n_docs = len(offsets) - 1
    doc = segment_ids(offsets)
    codes = np.asarray(pc.dictionary_encode(pieces).indices, dtype=np.int64)
    if keep is not None:
        doc, codes, piece_len = doc[keep], codes[keep], piece_len[keep]
    if len(codes) == 0:
        return np.zeros(n_docs, np.int64), np.zeros(n_docs, np.int64)
    key = doc * (int(codes.max()) + 1) + codes
    _, first, counts = np.unique(key, return_index=True, return_counts=True)
    extra = counts - 1
    group_doc = doc[first]
    dup_count = np.bincount(group_doc, weights=extra, minlength=n_docs).astype(np.int64)
    dup_chars = np.bincount(group_doc, weights=extra * piece_len[first], minlength=n_docs).astype(np.int64)
    return dup_count, dup_chars


def first_reason(n: int, rules: list[tuple[str, np.ndarray]]) -> pa.Array | None:
    """The name of the first rule that fires for each row (rules in order), null where none."""
    idx = np.full(n, -1, dtype=np.int32)
    for i, (_, fired) in enumerate(rules):
        idx = np.where((idx < 0) & fired, i, idx)
    if not (idx >= 0).any():
        return None
    names = pa.array([name for name, _ in rules], pa.string())
    return pc.take(names, pa.array(idx, mask=idx < 0))


def safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def with_columns(table: pa.Table, columns: dict[str, np.ndarray | pa.Array]) -> pa.Table:
    """Add or replace columns (score columns of a step)."""
    for name, values in columns.items():
        arr = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, arr) if i >= 0 else table.append_column(name, arr)
    return table


def replace_text(table: pa.Table, texts: pa.Array) -> pa.Table:
    i = table.schema.get_field_index("text")
    return table.set_column(i, table.schema.field(i), texts.cast(table.schema.field(i).type))


def fasttext_lines(texts: pa.Array, *, max_chars: int, lowercase: bool = False) -> list[str]:
    """Texts as fastText wants them: one line each (fastText reads up to a newline), capped at
    `max_chars` code points so megabyte-long documents cost a bounded amount."""
    capped = pc.utf8_slice_codeunits(texts, 0, max_chars)
    if lowercase:
        capped = pc.utf8_lower(capped)
    return pc.replace_substring_regex(capped, r"\s+", " ").to_pylist()
