"""MinHash signatures over whole batches, bit-identical to `datasketch.MinHash`, and LSH band hashes.

datasketch hashes one shingle at a time; here all shingle hashes of a batch sit in one array
and each chunk of them is permuted as a [shingles x num_perm] block, then reduced to one
minimum per document with `np.minimum.reduceat`. The arithmetic is datasketch's, with the
same numpy dtypes so wrap-around matches: "affine32" (datasketch >= 2.0 default) is
`fmix32(h) * a + b` in uint32; "legacy" is `(h * a + b) % (2^61 - 1) & (2^32 - 1)` in uint64.
"""

from __future__ import annotations

import functools

import numpy as np
from datasketch import LeanMinHash, MinHash

from pipeline.dedup.shingles import CHAIN_MULTIPLIER, ShingleHashes, fmix64

MERSENNE_PRIME = np.uint64((1 << 61) - 1)
MAX_HASH32 = np.uint64((1 << 32) - 1)
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))
CHUNK_CELLS = 1 << 20  # shingles x permutations per block: 4 MiB of uint32, cache-friendly


def fmix32(h: np.ndarray) -> np.ndarray:
    s1, m1, s2, m2, s3 = _FMIX32
    h = h ^ (h >> s1)
    h *= m1
    h ^= h >> s2
    h *= m2
    h ^= h >> s3
    return h


@functools.lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's permutation parameters (a, b), taken from datasketch itself."""
    a, b = MinHash(num_perm=num_perm, seed=seed, scheme=scheme).permutations
    dtype = np.uint32 if scheme == "affine32" else np.uint64
    return np.ascontiguousarray(a, dtype=dtype), np.ascontiguousarray(b, dtype=dtype)


def signatures(sh: ShingleHashes, num_perm: int, seed: int, scheme: str = "affine32") -> np.ndarray:
    """[docs x num_perm] MinHash values of the 32-bit shingle hashes (the low half of
    `sh.hashes`); documents without shingles keep datasketch's empty value (all max)."""
    a, b = permutations(num_perm, seed, scheme)
    n_docs = len(sh.offsets) - 1
    hv32 = (sh.hashes & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    if scheme == "affine32":
        hv = fmix32(hv32)
        empty = np.uint32(0xFFFFFFFF)
    else:
        hv = hv32.astype(np.uint64)
        empty = MAX_HASH32
    sig = np.full((n_docs, num_perm), empty, dtype=a.dtype)
    total = len(hv)
    chunk = max(1, CHUNK_CELLS // num_perm)
    # [num_perm x shingles] blocks: numpy's multiply/add/reduceat run along contiguous rows,
    # ~10x faster than the transposed layout.
    buf = np.empty((num_perm, min(chunk, total)), dtype=a.dtype)
    a_col, b_col = a[:, None], b[:, None]
    offsets = sh.offsets
    for start in range(0, total, chunk):
        end = min(start + chunk, total)
        block = buf[:, : end - start]
        np.multiply(a_col, hv[None, start:end], out=block)
        np.add(block, b_col, out=block)
        if scheme != "affine32":
            np.remainder(block, MERSENNE_PRIME, out=block)
            np.bitwise_and(block, MAX_HASH32, out=block)
        # Documents with shingles in [start, end): one reduceat segment each.
        first = int(np.searchsorted(offsets, start, side="right")) - 1
        last = int(np.searchsorted(offsets, end, side="left"))
        docs = np.arange(first, last)
        docs = docs[offsets[docs + 1] > offsets[docs]]
        seg = np.maximum(offsets[docs], start) - start
        mins = np.minimum.reduceat(block, seg, axis=1).T
        sig[docs] = np.minimum(sig[docs], mins)
    return sig


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """[docs x bands] 64-bit hashes of each band's `rows` MinHash values: equal band values
    give equal hashes; different ones collide with probability ~2^-64."""
    n = sig.shape[0]
    values = sig[:, : bands * rows].astype(np.uint64).reshape(n, bands, rows)
    h = np.broadcast_to(np.arange(1, bands + 1, dtype=np.uint64), (n, bands)).copy()
    mult = np.uint64(CHAIN_MULTIPLIER)
    for j in range(rows):
        h = fmix64(h * mult + values[:, :, j])
    return h


def to_lean_minhash(row: np.ndarray, seed: int, scheme: str = "affine32") -> LeanMinHash:
    """One signature row as a `datasketch.LeanMinHash` (for querying datasketch indexes)."""
    return LeanMinHash(seed=seed, hashvalues=row, scheme=scheme)
