"""Signatures and banding against datasketch itself (no storage involved)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from datasketch import LeanMinHash, MinHash, MinHashLSH

from pipeline.dedup import DedupConfig, DedupError, band_hashes, normalize, optimal_band_params, recall_band_params, shingle_hash64, shingle_hashes, shingles, signatures, to_lean_minhash, words_of
from pipeline.dedup.config import candidate_probability
from pipeline.dedup.shingles import word_hashes, xxh64_each
from tests.dedup.corpus import web_docs

EDGE_CASES = [
    "",
    "   \n\t ",
    "...!!! ---",
    "one",
    "Two words",
    "exactly five words right here",
    "Ｆｕｌｌｗｉｄｔｈ ＴＥＸＴ and ﬁ ligatures, “curly quotes” — dashes\u00a0nbsp\u3000ideographic space",
    "Größe STRASSE Ünïcödé ΣΊΣΥΦΟΣ İstanbul 😀emoji😀 tab\there\r\nnewline",
    "word " * 40,
    "\ufeffdedupli\u00adcation of zero\u200bwidth spaces, jo\u200dined and \u2060word\u2060 joiners\u200e",
]


@pytest.fixture(scope="module")
def texts(shared) -> list[str]:
    return [d["text"] for d in web_docs(shared, 25)] + EDGE_CASES


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_signatures_bit_identical_to_datasketch(texts, scheme):
    sh = shingle_hashes(normalize(pa.array(texts, pa.large_string())), 5)
    sig = signatures(sh, 128, 7, scheme)
    for i, text in enumerate(texts):
        expected = MinHash(num_perm=128, seed=7, hashfunc=lambda s: shingle_hash64(s) & 0xFFFFFFFF, scheme=scheme)
        doc_shingles = shingles(text, 5)
        expected.update_batch(doc_shingles)
        assert [shingle_hash64(s) for s in doc_shingles] == sh.of(i).tolist()
        assert sig[i].dtype == expected.hashvalues.dtype
        assert np.array_equal(sig[i], expected.hashvalues), f"doc {i} ({text[:30]!r})"
        lean = to_lean_minhash(sig[i], 7, scheme)
        assert lean == LeanMinHash(expected)
    assert np.all(sig[texts.index("")] == 0xFFFFFFFF)  # datasketch's empty sketch, in both schemes


def test_chunking_does_not_change_signatures(texts, monkeypatch):
    import pipeline.dedup.minhash as mh

    sh = shingle_hashes(normalize(pa.array(texts, pa.large_string())), 3)
    whole = signatures(sh, 64, 1)
    monkeypatch.setattr(mh, "CHUNK_CELLS", 64 * 37)  # chunk boundaries fall inside documents
    assert np.array_equal(mh.signatures(sh, 64, 1), whole)


def test_vectorised_words_match_the_plain_python_definition(texts):
    normalized = normalize(pa.array(texts, pa.large_string()))
    hashes, counts = word_hashes(normalized)
    expected = [w for t in texts for w in words_of(t)]
    assert counts.tolist() == [len(words_of(t)) for t in texts]
    assert hashes.tolist() == xxh64_each(pa.array(expected, pa.large_string())).tolist()
    assert words_of("Don't—STOP!  Ｎｏｗ") == ["don", "t", "stop", "now"]


def test_short_and_empty_documents():
    sh = shingle_hashes(normalize(pa.array(["Hello, world!", "", None, "a b c d e f"], pa.large_string())), 5)
    assert sh.words.tolist() == [2, 0, 0, 6]
    assert sh.counts.tolist() == [1, 0, 0, 2]
    assert sh.of(0).tolist() == [shingle_hash64(b"hello world")]
    assert sh.of(3).tolist() == [shingle_hash64(b"a b c d e"), shingle_hash64(b"b c d e f")]


@pytest.mark.parametrize("threshold,num_perm", [(0.8, 128), (0.7, 256), (0.9, 64)])
def test_band_params_are_datasketchs(threshold, num_perm):
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    assert optimal_band_params(threshold, num_perm) == (lsh.b, lsh.r)
    assert DedupConfig(num_perm=num_perm, threshold=threshold).band_params == (lsh.b, lsh.r)
    assert DedupConfig(num_perm=112, bands=14, rows=8).band_params == (14, 8)
    with pytest.raises(DedupError):
        DedupConfig(num_perm=64, bands=14, rows=8)


def test_band_hashes_collide_exactly_when_datasketch_buckets_do(texts):
    """Two documents share our band hash iff datasketch's MinHashLSH puts them in one bucket."""
    near = [texts[0], texts[0].replace(" the ", " a ", 3), texts[1], texts[1] + " trailing words added here"]
    sh = shingle_hashes(normalize(pa.array(near, pa.large_string())), 5)
    sig = signatures(sh, 128, 1)
    bands, rows = optimal_band_params(0.5, 128)
    bh = band_hashes(sig, bands, rows)
    lsh = MinHashLSH(threshold=0.5, num_perm=128)
    lean = [to_lean_minhash(s, 1) for s in sig]
    for i, m in enumerate(lean):
        lsh.insert(str(i), m)
    for i in range(len(near)):
        ours = {str(j) for j in range(len(near)) if np.any(bh[i] == bh[j])}
        assert ours == set(lsh.query(lean[i]))


def test_invisible_characters_do_not_split_or_change_words():
    plain = "Deduplication keeps one copy of every page"
    hidden = "\ufeffDedupli\u00adcation keeps one\u200b copy of ev\u200dery page\u200e"
    assert words_of(hidden) == words_of(plain) == ["deduplication", "keeps", "one", "copy", "of", "every", "page"]
    normalized = normalize(pa.array([plain, hidden], pa.large_string()))
    assert normalized[0].as_py().split() == normalized[1].as_py().split()
    sh = shingle_hashes(normalized, 5)
    assert sh.of(0).tolist() == sh.of(1).tolist()
    assert sh.exact_hashes()[0][0] == sh.exact_hashes()[0][1]


def test_threshold_sets_the_bands_when_candidates_are_verified():
    """With verification the bands follow the threshold (99 % of pairs at the threshold share
    a bucket, steepest such banding); a user threshold never keeps bands tuned for another."""
    assert DedupConfig(num_perm=120, threshold=0.8, verify_jaccard=True).band_params == (20, 6)
    for threshold in (0.5, 0.7, 0.9, 0.95):
        bands, rows = DedupConfig(num_perm=120, threshold=threshold, verify_jaccard=True).band_params
        assert candidate_probability(threshold, bands, rows) >= 0.99
        assert candidate_probability(threshold, 120 // (rows + 1), rows + 1) < 0.99  # the steepest that reaches it
    assert recall_band_params(0.7, 120) == (30, 4) and recall_band_params(0.9, 120) == (12, 10)
    from pipeline.refresh import DEFAULT_DEDUP

    assert DedupConfig(**{**DEFAULT_DEDUP, "threshold": 0.7}).band_params == (30, 4)
    with pytest.raises(DedupError, match="leave bands/rows out"):
        DedupConfig(num_perm=120, threshold=0.5, bands=10, rows=12)


def test_batches_are_bounded_in_bytes_as_well_as_documents():
    """1,024 documents of up to 5 MB each would be 5 GB normalised several times over; slices
    keep to the byte budget, cover every row once and in order, and a single document larger
    than the budget makes a slice of its own."""
    from pipeline.dedup.shingles import bounded_slices

    sizes = [10, 10, 500, 10, None, 10, 10, 10, 10, 10, 0, 90]
    texts = pa.array([None if s is None else "x" * s for s in sizes], pa.large_string())
    slices = bounded_slices(texts, max_docs=4, max_bytes=100)
    assert [i for a, b in slices for i in range(a, b)] == list(range(len(sizes)))
    for a, b in slices:
        assert b - a <= 4 and (sum(s or 0 for s in sizes[a:b]) <= 100 or b - a == 1)
    assert (2, 3) in slices and bounded_slices(pa.array([], pa.string()), 4, 100) == []


def test_a_byte_budget_does_not_change_the_result(store, bucket, shared, monkeypatch):
    """The dedup output with batches of a few documents (a 20 kB budget) equals the default's."""
    import importlib
    import io

    import pyarrow.parquet as pq

    from pipeline.dataset import DatasetVersion
    from pipeline.dedup import read_removals, run_dedup
    from pipeline.schema import documents_from_pylist
    from pipeline.storage import join

    docs = web_docs(shared, 60, min_words=100)
    rows = [{"id": f"d{i}", "text": d["text"], "source": "t"} for i, d in enumerate(docs)]
    rows += [{"id": f"copy{i}", "text": d["text"].upper(), "source": "t"} for i, d in enumerate(docs[:10])]
    sink = io.BytesIO()
    pq.write_table(documents_from_pylist(rows), sink)
    uri = store.put_bytes(join(bucket, "bytes/in.parquet"), sink.getvalue()).uri

    def removals(name: str):
        version = DatasetVersion(join(bucket, f"bytes/{name}"), "v1", store)
        run_dedup([uri], join(bucket, f"bytes/w-{name}"), version, DedupConfig(num_perm=120, threshold=0.8, verify_jaccard=True))
        return read_removals(version).to_pylist()

    default = removals("default")
    monkeypatch.setattr(importlib.import_module("pipeline.dedup.shingles"), "MAX_BATCH_TEXT_BYTES", 20_000)
    assert removals("small") == default and len(default) >= 10
