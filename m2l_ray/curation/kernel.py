"""The dedup kernel compiled with numba: shingle hashes, MinHash signatures, band keys.

Why compiled: the numpy formulation (shingles.py, minhash.py) is bound by memory
traffic, not arithmetic. XXH64 over whole arrays makes about ten passes per 8-byte
lane, and MinHash materialises a (num_perm x shingles) matrix before reducing it,
so 100K documents cost about 36 CPU-µs each (measured on a 2-core Xeon), most of
``m2l dedup``'s time. Here each document is hashed in registers, one pass, and the
min over permutations is a loop LLVM vectorises.

Every function returns exactly what its numpy reference returns, bit for bit
(tests/test_curation_kernel.py compares them on every script and edge case), so
signatures, clusters and kept rows never depend on which one ran. The numpy code
stays the reference and the fallback: ``available()`` is False when numba is not
installed or ``M2L_DEDUP_KERNEL=numpy`` is set, and callers then use it.

Compiled code is cached on disk (numba's ``cache=True``), so only the first run on
a machine pays the compilation (a few seconds); later processes load it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
from typing import Any

import numpy as np

#: Names of the functions below that numba compiles, in definition order. They are
#: plain Python until ``_compile`` replaces each module global by its jitted version
#: (jitted functions then call each other through those globals): importing numba
#: costs 0.2 s, so it happens on the warm-up thread, not when this module loads.
_KERNELS: list[str] = []
_LOCK = threading.Lock()
_COMPILED = False


def njit(fn: Any) -> Any:
    """Mark ``fn`` for compilation by ``_compile``."""
    _KERNELS.append(fn.__name__)
    return fn


def _compile() -> None:
    """Replace every marked function by its numba dispatcher (cached on disk), once."""
    global _COMPILED
    if _COMPILED:
        return
    with _LOCK:
        if _COMPILED:
            return
        import numba

        g = globals()
        for name in _KERNELS:
            g[name] = numba.njit(cache=True, nogil=True)(g[name])
        _COMPILED = True


u64, u32 = np.uint64, np.uint32
#: XXH64 primes
P1 = u64(0x9E3779B185EBCA87)
P2 = u64(0xC2B2AE3D27D4EB4F)
P3 = u64(0x165667B19E3779F9)
P4 = u64(0x85EBCA77C2B2AE63)
P5 = u64(0x27D4EB2F165667C5)
MASK32 = u64(0xFFFFFFFF)


def warm_up() -> threading.Thread | None:
    """Load (or compile) every kernel function on a background thread.

    Loading numba's cache takes about half a second of mostly Python work; started
    before the input is read (which pyarrow does without the GIL) it costs nothing
    on the wall clock. Calls made meanwhile wait on numba's compiler lock."""
    if not available():
        return None

    def run() -> None:
        # through the callers, so that every argument type is the one a job passes
        import pyarrow as pa

        from m2l_ray.curation import dedup, minhash, shingles

        for mode in (None, "auto"):
            h, off = shingles.shingle_hashes(["one two three", "日本語です", ""], mode)
        a, b = minhash.permutations(4, 1)
        minhash.band_keys(minhash.signatures(h, off, a, b), 2, 2)
        # ["x", None, ""] from buffers: pa.array(list) would import pandas (0.15 s)
        col = pa.StringArray.from_buffers(
            3, pa.py_buffer(np.array([0, 1, 1, 1], np.int32)), pa.py_buffer(b"x"),
            pa.py_buffer(np.packbits([1, 0, 1], bitorder="little")))
        dedup.row_keys(pa.Table.from_arrays([col], names=["t"]), None)
        pair_jaccard(h, off, np.zeros(1, np.int64), np.ones(1, np.int64))
        dedup.components_local(np.zeros(1, np.int64), np.ones(1, np.int64))

    t = threading.Thread(target=run, name="m2l-kernel-warm-up", daemon=True)
    t.start()
    return t


@functools.cache
def available() -> bool:
    """Whether the compiled kernel is in use (else callers run the numpy reference)."""
    if os.environ.get("M2L_DEDUP_KERNEL", "").lower() == "numpy":
        return False
    try:
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):
        return False


@njit
def rotl(x, r):
    return (x << u64(r)) | (x >> u64(64 - r))


@njit
def xround(acc, lane):
    acc = acc + lane * P2
    acc = rotl(acc, 31)
    return acc * P1


@njit
def merge(h, v):
    h = h ^ xround(u64(0), v)
    return h * P1 + P4


@njit
def avalanche(h):
    h = h ^ (h >> u64(33))
    h = h * P2
    h = h ^ (h >> u64(29))
    h = h * P3
    return h ^ (h >> u64(32))


@njit
def stripe(v1, v2, v3, v4, l1, l2, l3, l4):
    """The four accumulators after one 32-byte stripe."""
    return xround(v1, l1), xround(v2, l2), xround(v3, l3), xround(v4, l4)


@njit
def converge(v1, v2, v3, v4):
    """The four stripe accumulators folded into one (inputs of 32 bytes or more)."""
    h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18)
    return merge(merge(merge(merge(h, v1), v2), v3), v4)


@njit
def step8(h, lane):
    """One trailing 8-byte lane."""
    return rotl(h ^ xround(u64(0), lane), 27) * P1 + P4


@njit
def step4(h, word):
    """One trailing 4-byte word."""
    return rotl(h ^ (u64(word) * P1), 23) * P2 + P3


@njit
def lane32(buf, i):
    return u64(buf[i]) | (u64(buf[i + 1]) << u64(32))


@njit
def xxh64_u32(buf, start, n, seed):
    """XXH64 of the 4n little-endian bytes of buf[start:start + n] (uint32)."""
    s = u64(seed)
    i = start
    end = start + n
    if 4 * n >= 32:
        v1, v2, v3, v4 = s + P1 + P2, s + P2, s, s - P1
        while i + 8 <= end:
            v1, v2, v3, v4 = stripe(v1, v2, v3, v4, lane32(buf, i), lane32(buf, i + 2),
                                    lane32(buf, i + 4), lane32(buf, i + 6))
            i += 8
        h = converge(v1, v2, v3, v4)
    else:
        h = s + P5
    h = h + u64(4 * n)
    while i + 2 <= end:
        h = step8(h, lane32(buf, i))
        i += 2
    if i < end:
        h = step4(h, buf[i])
    return avalanche(h)


@njit
def _read64(buf, i):
    v = u64(0)
    for k in range(8):
        v |= u64(buf[i + k]) << u64(8 * k)
    return v


@njit
def _xxh64_bytes(buf, start, n, seed):
    """XXH64 of the bytes buf[start:start + n] (uint8): ``xxhash.xxh64_intdigest``."""
    s = u64(seed)
    i = start
    end = start + n
    if n >= 32:
        v1, v2, v3, v4 = s + P1 + P2, s + P2, s, s - P1
        while i + 32 <= end:
            v1, v2, v3, v4 = stripe(v1, v2, v3, v4, _read64(buf, i), _read64(buf, i + 8),
                                    _read64(buf, i + 16), _read64(buf, i + 24))
            i += 32
        h = converge(v1, v2, v3, v4)
    else:
        h = s + P5
    h = h + u64(n)
    while i + 8 <= end:
        h = step8(h, _read64(buf, i))
        i += 8
    if i + 4 <= end:
        h = step4(h, u64(buf[i]) | (u64(buf[i + 1]) << u64(8)) | (u64(buf[i + 2]) << u64(16))
                  | (u64(buf[i + 3]) << u64(24)))
        i += 4
    while i < end:
        h = h ^ (u64(buf[i]) * P5)
        h = rotl(h, 11) * P1
        i += 1
    return avalanche(h)


@njit
def _string_hashes(offsets, data, null, seed, null_hash):
    out = np.empty(len(offsets) - 1, np.uint64)
    for r in range(len(out)):
        if null[r]:
            out[r] = null_hash
        else:
            out[r] = _xxh64_bytes(data, offsets[r], offsets[r + 1] - offsets[r], seed)
    return out


@njit
def xxh64_u64(buf, start, n, seed):
    """XXH64 of the 8n little-endian bytes of buf[start:start + n] (uint64)."""
    s = u64(seed)
    i = start
    end = start + n
    if 8 * n >= 32:
        v1, v2, v3, v4 = s + P1 + P2, s + P2, s, s - P1
        while i + 4 <= end:
            v1, v2, v3, v4 = stripe(v1, v2, v3, v4, buf[i], buf[i + 1], buf[i + 2], buf[i + 3])
            i += 4
        h = converge(v1, v2, v3, v4)
    else:
        h = s + P5
    h = h + u64(8 * n)
    while i < end:
        h = step8(h, buf[i])
        i += 1
    return avalanche(h)


@njit
def _shingles(cps, table, starts, ends, char_mode, ngram, char_ngram,
              token_seed, word_seed, char_seed, max_token):
    """Top 32 bits of every shingle hash, grouped by document, and the offsets.

    ``table[cp]`` is 1 for word characters (``shingles.word_table``)."""
    n_docs = len(starts)
    out = np.empty(len(cps) + 1, np.uint32)
    offsets = np.zeros(n_docs + 1, np.int64)
    longest = 1
    for d in range(n_docs):
        longest = max(longest, ends[d] - starts[d])
    toks = np.empty(longest, np.uint64)
    chars = np.empty(longest, np.uint32)
    pair = np.empty(2, np.uint64)
    pos = 0
    for d in range(n_docs):
        s, e = starts[d], ends[d]
        if char_mode[d]:
            m = 0
            for i in range(s, e):
                if table[cps[i]]:
                    chars[m] = cps[i]
                    m += 1
            if m >= char_ngram:
                for j in range(m - char_ngram + 1):
                    out[pos] = u32(xxh64_u32(chars, j, char_ngram, char_seed) >> u64(32))
                    pos += 1
            elif m > 0:
                out[pos] = u32(xxh64_u32(chars, 0, m, char_seed) >> u64(32))
                pos += 1
        else:
            t = 0
            i = s
            while i < e:
                if not table[cps[i]]:
                    i += 1
                    continue
                j = i + 1
                while j < e and table[cps[j]]:
                    j += 1
                length = j - i
                h = xxh64_u32(cps, i, min(length, max_token), token_seed)
                if length > max_token:  # fold the true length into over-long tokens
                    pair[0] = h
                    pair[1] = u64(length)
                    h = xxh64_u64(pair, 0, 2, 0)
                toks[t] = h
                t += 1
                i = j
            if t >= ngram:
                for j in range(t - ngram + 1):
                    out[pos] = u32(xxh64_u64(toks, j, ngram, word_seed) >> u64(32))
                    pos += 1
            elif t > 0:
                out[pos] = u32(xxh64_u64(toks, 0, t, word_seed) >> u64(32))
                pos += 1
        offsets[d + 1] = pos
    return out[:pos].copy(), offsets


@njit
def _signatures(hashes, offsets, a, b):
    """(n_docs, num_perm) min over each document's shingles of a*x + b mod 2**32."""
    n_docs = len(offsets) - 1
    p = len(a)
    sig = np.full((n_docs, p), u32(0xFFFFFFFF), np.uint32)
    for d in range(n_docs):
        row = sig[d]
        for k in range(offsets[d], offsets[d + 1]):
            x = u64(hashes[k])
            for i in range(p):
                v = u32((u64(a[i]) * x + u64(b[i])) & MASK32)
                if v < row[i]:
                    row[i] = v
    return sig


@njit
def _band_keys(sig, bands, rows):
    """XXH64 of each band's rows of each signature, seeded by band index + 1."""
    n = sig.shape[0]
    out = np.empty((n, bands), np.uint64)
    for d in range(n):
        row = sig[d]
        for j in range(bands):
            out[d, j] = xxh64_u32(row, j * rows, rows, j + 1)
    return out


@njit
def _pair_jaccard(vals, offs, ia, ib):
    n_lists = len(offs) - 1
    sv = np.empty_like(vals)
    so = np.zeros(n_lists + 1, np.int64)
    pos = 0
    for k in range(n_lists):  # each list once as a sorted set
        seg = np.sort(vals[offs[k]:offs[k + 1]])
        for j in range(len(seg)):
            if j == 0 or seg[j] != seg[j - 1]:
                sv[pos] = seg[j]
                pos += 1
        so[k + 1] = pos
    out = np.zeros(len(ia), np.float64)
    for e in range(len(ia)):
        i, i_end = so[ia[e]], so[ia[e] + 1]
        j, j_end = so[ib[e]], so[ib[e] + 1]
        union = (i_end - i) + (j_end - j)
        inter = 0
        while i < i_end and j < j_end:
            if sv[i] == sv[j]:
                inter += 1
                i += 1
                j += 1
            elif sv[i] < sv[j]:
                i += 1
            else:
                j += 1
        union -= inter
        out[e] = inter / union if union > 0 else 0.0
    return out


@njit
def _min_roots(ia, ib, n):
    """Union-find over n nodes; every node's root is the smallest node of its component."""
    parent = np.arange(n)
    for k in range(len(ia)):
        x, y = ia[k], ib[k]
        while parent[x] != x:  # path halving
            parent[x] = parent[parent[x]]
            x = parent[x]
        while parent[y] != y:
            parent[y] = parent[parent[y]]
            y = parent[y]
        if x < y:
            parent[y] = x
        elif y < x:
            parent[x] = y
    for i in range(n):  # parents are smaller than their children: one pass in order
        parent[i] = parent[parent[i]]
    return parent


def min_roots(ia: np.ndarray, ib: np.ndarray, n: int) -> np.ndarray:
    """Index of the smallest node in each node's component, for edges (ia, ib) over
    nodes 0..n-1: what ``dedup.components_local`` takes from scipy otherwise, whose
    import (0.3 s) costs more than the components of a million documents here."""
    _compile()
    return _min_roots(np.ascontiguousarray(ia, dtype=np.int64),
                      np.ascontiguousarray(ib, dtype=np.int64), n)


def pair_jaccard(vals: np.ndarray, offs: np.ndarray, ia: np.ndarray, ib: np.ndarray
                 ) -> np.ndarray:
    """Exact Jaccard of lists ia[k] and ib[k] of a (vals, offs) list column, each list
    taken as a set: ``minhash.pair_jaccard`` of the gathered pairs, without gathering."""
    _compile()
    return _pair_jaccard(np.ascontiguousarray(vals, dtype=np.uint32),
                         np.ascontiguousarray(offs, dtype=np.int64),
                         np.ascontiguousarray(ia, dtype=np.int64),
                         np.ascontiguousarray(ib, dtype=np.int64))


def shingle_hashes(cps: np.ndarray, table: np.ndarray, spans: np.ndarray,
                   char_mode: np.ndarray, ngram: int, char_ngram: int,
                   seeds: tuple[int, int, int], max_token: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Compiled ``shingles.shingle_hashes`` after normalisation (see that function)."""
    _compile()
    token_seed, word_seed, char_seed = seeds
    return _shingles(
        cps, table, np.ascontiguousarray(spans[:, 0]), np.ascontiguousarray(spans[:, 1]),
        np.ascontiguousarray(char_mode, dtype=np.bool_), ngram, char_ngram,
        token_seed, word_seed, char_seed, max_token)


def signatures(hashes: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray
               ) -> np.ndarray:
    """Compiled ``minhash.signatures`` (a, b as that function takes them)."""
    _compile()
    return _signatures(np.ascontiguousarray(hashes, dtype=np.uint32),
                                  np.ascontiguousarray(offsets, dtype=np.int64),
                                  np.ascontiguousarray(a.ravel()),
                                  np.ascontiguousarray(b.ravel()))


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Compiled ``minhash.band_keys``: (n_docs, bands) int64."""
    _compile()
    return _band_keys(np.ascontiguousarray(sig, dtype=np.uint32),
                                 bands, rows).view(np.int64)


def string_hashes(arr: Any, seed: int, null_hash: int) -> np.ndarray:
    """uint64 XXH64 of each value's UTF-8 bytes of an Arrow string array (one chunk),
    read from its buffers without making Python strings; ``null_hash`` for nulls."""
    _compile()
    import pyarrow as pa

    wide = pa.types.is_large_string(arr.type)
    _, off_buf, data_buf = arr.buffers()
    off = np.frombuffer(off_buf, dtype=np.int64 if wide else np.int32)[
        arr.offset : arr.offset + len(arr) + 1].astype(np.int64)
    data = np.frombuffer(data_buf if data_buf is not None else b"", dtype=np.uint8)
    # the validity bitmap, not is_null().to_numpy(): that imports pandas (0.15 s)
    valid = arr.buffers()[0]
    if arr.null_count == 0 or valid is None:
        null = np.zeros(len(arr), np.bool_)
    else:
        bits = np.unpackbits(np.frombuffer(valid, np.uint8), bitorder="little")
        null = bits[arr.offset : arr.offset + len(arr)] == 0
    return _string_hashes(off, data, null, seed, u64(null_hash))


if __name__ == "__main__":  # `python -m m2l_ray.curation.kernel`: compile and cache it now
    thread = warm_up()
    if thread is not None:
        thread.join()
    print(f"m2l: dedup kernel {'compiled and cached' if thread else 'not in use (numpy)'}")
