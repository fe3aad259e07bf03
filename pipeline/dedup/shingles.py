"""Text normalisation and word n-gram shingle hashes, vectorised over whole Arrow arrays.

Normalisation (the same for exact and near-duplicate detection): Unicode NFKC, lower case,
invisible format characters (category Cf: soft hyphen, zero-width space/joiners, BOM, bidi
marks, word joiner) deleted, then every separator character (categories P*, S*, Z* and
control characters Cc: punctuation, symbols, all whitespace) becomes a space. The words of a
document are the non-empty runs between spaces, so "Don't—STOP!" and "don t stop" have the
same words, and "dedupli\u00adcation" is "deduplication".

A shingle is `ngram` consecutive words; a document with fewer words than `ngram` (but at least
one) is one shingle of all its words, so short documents still get a signature; a document
with no words has no shingles (and is never anybody's duplicate).

Shingle hash: every word is hashed once with xxh64 (per unique word of a batch, so the Python
loop runs over the vocabulary, not the text), then the words of a shingle are chained with a
multiply-add and the MurmurHash3 64-bit finalizer. `shingle_hash32` / `shingle_hash64` compute
the same value from the shingle's bytes (its words joined by single spaces), so they are the
`hashfunc` to give `datasketch.MinHash` for bit-identical signatures.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

CHAIN_MULTIPLIER = 0x9E3779B97F4A7C15  # odd 64-bit constant (golden ratio), spreads the chain state
MASK64 = (1 << 64) - 1
MASK32 = (1 << 32) - 1

_U64 = np.uint64
_FMIX64 = (_U64(33), _U64(0xFF51AFD7ED558CCD), _U64(33), _U64(0xC4CEB9FE1A85EC53), _U64(33))


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (a bijection with full avalanche), element-wise, wrapping."""
    s1, m1, s2, m2, s3 = _FMIX64
    h = h ^ (h >> s1)
    h *= m1
    h ^= h >> s2
    h *= m2
    h ^= h >> s3
    return h


def _fmix64_int(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & MASK64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & MASK64
    return h ^ (h >> 33)


def is_separator(ch: str) -> bool:
    """Punctuation, symbols, separators (spaces, line breaks) and control characters."""
    category = unicodedata.category(ch)
    return category[0] in "PSZ" or category == "Cc"


def is_invisible(ch: str) -> bool:
    """Format characters (Cf), which render as nothing: deleted, so they cannot split a word."""
    return unicodedata.category(ch) == "Cf"


_ASCII_SEPARATOR = np.array([is_separator(chr(c)) for c in range(128)] + [False] * 128)
KEEP, SEPARATOR, INVISIBLE = 0, 1, 2


@functools.lru_cache(maxsize=1 << 16)
def _char_class(code: int) -> int:
    ch = chr(code)
    return INVISIBLE if is_invisible(ch) else SEPARATOR if is_separator(ch) else KEEP


def _fold_separators(texts: pa.LargeStringArray) -> pa.LargeStringArray:
    """Every separator character's bytes become spaces and every invisible character's bytes
    are deleted (offsets shift only when something was deleted).

    ASCII goes through a 256-entry table; multi-byte characters are decoded in numpy and only
    the distinct code points of the batch are classified in Python."""
    offsets = np.frombuffer(texts.buffers()[1], dtype=np.int64)[texts.offset : texts.offset + len(texts) + 1]
    lo, hi = int(offsets[0]), int(offsets[-1])
    data = np.frombuffer(texts.buffers()[2], dtype=np.uint8)[lo:hi] if hi > lo else np.zeros(0, np.uint8)
    sep = _ASCII_SEPARATOR[data]
    leads = np.flatnonzero(data >= 0xC0)
    if leads.size:
        padded = np.concatenate([data, np.zeros(3, np.uint8)])
        b0, b1, b2, b3 = (padded[leads + k].astype(np.int32) for k in range(4))
        length = 2 + (b0 >= 0xE0) + (b0 >= 0xF0)
        b1, b2, b3 = b1 & 0x3F, b2 & 0x3F, b3 & 0x3F
        code = np.where(
            length == 2,
            ((b0 & 0x1F) << 6) | b1,
            np.where(length == 3, ((b0 & 0x0F) << 12) | (b1 << 6) | b2, ((b0 & 0x07) << 18) | (b1 << 12) | (b2 << 6) | b3),
        )
        distinct, inverse = np.unique(code, return_inverse=True)
        classes = np.fromiter((_char_class(int(c)) for c in distinct), dtype=np.int8, count=len(distinct))[inverse]
        invisible = classes == INVISIBLE
        for k in range(4):
            sep[leads[(classes == SEPARATOR) & (length > k)] + k] = True
        if invisible.any():
            delete = np.zeros(len(data), bool)
            for k in range(4):
                delete[leads[invisible & (length > k)] + k] = True
    folded = np.where(sep, np.uint8(0x20), data)
    new_offsets = (offsets - lo).astype(np.int64)
    if leads.size and invisible.any():
        deleted_before = np.concatenate([[0], np.cumsum(delete)])
        new_offsets -= deleted_before[new_offsets]
        folded = folded[~delete]
    return pa.LargeStringArray.from_buffers(
        len(texts), pa.py_buffer(new_offsets.tobytes()), pa.py_buffer(folded.tobytes()), texts.buffers()[0], texts.null_count, 0
    )


# Text shingled at once: normalising makes a few copies of it, and the word lists index it
# with 32-bit offsets, so a batch is bounded in bytes as well as in documents.
MAX_BATCH_TEXT_BYTES = 64 << 20


def bounded_slices(texts: pa.Array | pa.ChunkedArray, max_docs: int, max_bytes: int | None = None) -> list[tuple[int, int]]:
    """(start, stop) row ranges covering `texts` in order, each at most `max_docs` rows and
    `max_bytes` (default MAX_BATCH_TEXT_BYTES) bytes of text; a single larger document makes
    a range of its own."""
    max_bytes = max_bytes or MAX_BATCH_TEXT_BYTES
    n = len(texts)
    sizes = pc.fill_null(pc.binary_length(texts), 0).to_numpy(zero_copy_only=False).astype(np.int64) if n else np.zeros(0, np.int64)
    ends = np.cumsum(sizes)
    out, start = [], 0
    while start < n:
        base = ends[start - 1] if start else 0
        stop = int(np.searchsorted(ends, base + max_bytes, side="right"))
        stop = min(max(stop, start + 1), start + max_docs, n)
        out.append((start, stop))
        start = stop
    return out


def normalize(texts: pa.Array | pa.ChunkedArray) -> pa.LargeStringArray:
    """NFKC, lower case, invisible characters deleted and every separator character replaced
    by a space: the words of a document are the non-empty runs between spaces. Nulls become
    empty documents."""
    texts = pc.fill_null(texts, "")
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if texts.type != pa.large_string():
        texts = texts.cast(pa.large_string())
    return _fold_separators(pc.utf8_lower(pc.utf8_normalize(texts, "NFKC")))


def words_of(text: str) -> list[str]:
    """The words of one document, computed in plain Python: the definition the vectorised
    `normalize` + `word_hashes` implement (tests compare the two)."""
    # Arrow lower-cases with Unicode's simple (one character to one) mapping, without the
    # context rules of str.lower (final sigma) or its multi-character results (U+0130).
    lowered = "".join(ch.lower()[:1] for ch in unicodedata.normalize("NFKC", text))
    return "".join(" " if is_separator(ch) else ch for ch in lowered if not is_invisible(ch)).split()


@dataclass
class ShingleHashes:
    """Shingle hashes of a batch of documents, concatenated: document i owns
    `hashes[offsets[i]:offsets[i + 1]]` (an empty range when it has no words)."""

    hashes: np.ndarray  # uint64, one per shingle
    offsets: np.ndarray  # int64, len(docs) + 1
    word_hashes: np.ndarray  # uint64, xxh64 of every word, concatenated
    words: np.ndarray  # int64, number of words per document

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def of(self, i: int) -> np.ndarray:
        return self.hashes[self.offsets[i] : self.offsets[i + 1]]

    def exact_hashes(self) -> tuple[np.ndarray, np.ndarray]:
        """128-bit hash of each document's word sequence (equal iff the normalised texts are
        equal, up to hash collisions), as (high, low) uint64 halves."""
        bounds = np.concatenate([[0], np.cumsum(self.words)]).tolist()
        raw = memoryview(np.ascontiguousarray(self.word_hashes)).cast("B")
        digests = [xxhash.xxh3_128_intdigest(raw[8 * s : 8 * e]) for s, e in zip(bounds[:-1], bounds[1:])]
        hi = np.fromiter((d >> 64 for d in digests), dtype=np.uint64, count=len(digests))
        lo = np.fromiter((d & MASK64 for d in digests), dtype=np.uint64, count=len(digests))
        return hi, lo


def word_hashes(normalized: pa.LargeStringArray) -> tuple[np.ndarray, np.ndarray]:
    """xxh64 of every word of every document, concatenated, and the word count per document."""
    split = pc.split_pattern(normalized, " ")
    words = pc.list_flatten(split)
    parents = pc.list_parent_indices(split).to_numpy()
    nonempty = pc.greater(pc.binary_length(words), 0)
    words = words.filter(nonempty)
    parents = parents[nonempty.to_numpy(zero_copy_only=False)]
    counts = np.bincount(parents, minlength=len(normalized)).astype(np.int64)
    if len(words) == 0:
        return np.zeros(0, np.uint64), counts
    encoded = words.dictionary_encode()
    return xxh64_each(encoded.dictionary)[encoded.indices.to_numpy()], counts


def xxh64_each(strings: pa.Array) -> np.ndarray:
    """xxh64 of each string's UTF-8 bytes, hashing slices of the Arrow data buffer in place."""
    strings = strings.cast(pa.large_string()) if strings.type != pa.large_string() else strings
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int64)[strings.offset : strings.offset + len(strings) + 1]
    data = memoryview(strings.buffers()[2] or b"")
    h = xxhash.xxh64_intdigest
    bounds = offsets.tolist()
    return np.fromiter((h(data[s:e]) for s, e in zip(bounds[:-1], bounds[1:])), dtype=np.uint64, count=len(strings))


def _fmix64_inplace(h: np.ndarray, tmp: np.ndarray) -> None:
    s1, m1, s2, m2, s3 = _FMIX64
    np.right_shift(h, s1, out=tmp)
    h ^= tmp
    h *= m1
    np.right_shift(h, s2, out=tmp)
    h ^= tmp
    h *= m2
    np.right_shift(h, s3, out=tmp)
    h ^= tmp


def shingle_hashes(normalized: pa.LargeStringArray, ngram: int) -> ShingleHashes:
    """64-bit hashes of every word n-gram of every (normalised) document, vectorised.

    The chain runs over the whole word array with shifted slices (no gathers): after step k,
    position p holds the hash of words p..p+k; n-grams crossing a document end are dropped at
    the end, and a short document's single shingle is captured after its last word."""
    if ngram < 1:
        raise ValueError("ngram must be >= 1")
    wh, words = word_hashes(normalized)
    n_docs, total_words = len(words), len(wh)
    word_starts = np.concatenate([[0], np.cumsum(words)[:-1]]).astype(np.int64)
    per_doc = np.where(words >= ngram, words - ngram + 1, np.minimum(words, 1))
    offsets = np.concatenate([[0], np.cumsum(per_doc)]).astype(np.int64)
    if total_words == 0:
        return ShingleHashes(np.zeros(0, np.uint64), offsets, wh, words)
    short = np.flatnonzero((words > 0) & (words < ngram))
    captured = np.zeros(len(short), np.uint64)
    h = wh.copy()
    tmp = np.empty_like(h)
    _fmix64_inplace(h, tmp)
    mult = _U64(CHAIN_MULTIPLIER)
    for k in range(ngram):
        if k:
            view = h[: total_words - k]
            view *= mult
            view += wh[k:]
            _fmix64_inplace(view, tmp[: total_words - k])
        done = words[short] == k + 1
        captured[done] = h[word_starts[short[done]]]
    keep = np.ones(total_words, bool)
    long_docs = np.flatnonzero(words >= ngram)
    if ngram > 1 and len(long_docs):
        ends = word_starts[long_docs] + words[long_docs]
        keep[(ends[:, None] - np.arange(1, ngram)[None, :]).ravel()] = False
    if len(short):
        h[word_starts[short]] = captured
        tail = word_starts[short][:, None] + np.arange(1, ngram)[None, :]
        keep[tail[np.arange(1, ngram)[None, :] < words[short][:, None]]] = False
    return ShingleHashes(h[keep], offsets, wh, words)


def shingle_hash64(shingle: bytes | str) -> int:
    """The hash `shingle_hashes` gives a shingle, from its words joined by single spaces."""
    text = shingle.decode("utf-8") if isinstance(shingle, (bytes, bytearray)) else shingle
    h = 0
    for word in text.split(" "):
        h = _fmix64_int((h * CHAIN_MULTIPLIER + xxhash.xxh64_intdigest(word.encode("utf-8"))) & MASK64)
    return h


def shingle_hash32(shingle: bytes | str) -> int:
    """The 32-bit hash MinHash signatures use: the low half of `shingle_hash64`."""
    return shingle_hash64(shingle) & MASK32


def shingles(text: str, ngram: int) -> list[bytes]:
    """The shingles of one document as bytes (its words joined by spaces), in order, with
    repeats; what to feed `datasketch.MinHash.update` with `hashfunc=shingle_hash32`."""
    words = words_of(text)
    if not words:
        return []
    if len(words) < ngram:
        return [" ".join(words).encode()]
    return [" ".join(words[i : i + ngram]).encode() for i in range(len(words) - ngram + 1)]
