"""XXH64 over many fixed-length keys at once, in numpy.

MinHash needs one hash per shingle, and a corpus has billions of shingles: calling
``xxhash.xxh64`` once per shingle from Python costs more than everything else in the
dedup stage together. All shingles of one batch have the same length in 4- or 8-byte
lanes (n code points, or n token hashes), so the XXH64 algorithm runs as a handful of
whole-array numpy operations per lane instead. The output is bit-identical to the
reference implementation (``xxhash.xxh64_intdigest`` over the same little-endian
bytes), which tests/test_curation_minhash.py checks, so signatures do not depend on
this module's cleverness.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

U64 = np.uint64
P1 = U64(0x9E3779B185EBCA87)
P2 = U64(0xC2B2AE3D27D4EB4F)
P3 = U64(0x165667B19E3779F9)
P4 = U64(0x85EBCA77C2B2AE63)
P5 = U64(0x27D4EB2F165667C5)


def _rotl_(x: np.ndarray, r: int, tmp: np.ndarray) -> np.ndarray:
    """x = rotl(x, r), in place (tmp is scratch of the same shape)."""
    np.right_shift(x, U64(64 - r), out=tmp)
    np.left_shift(x, U64(r), out=x)
    np.bitwise_or(x, tmp, out=x)
    return x


def _round_(acc: np.ndarray, lane: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """acc = round(acc, lane), in place."""
    np.multiply(lane, P2, out=tmp)
    np.add(acc, tmp, out=acc)
    _rotl_(acc, 31, tmp)
    np.multiply(acc, P1, out=acc)
    return acc


def _xxh64_lanes(
    lanes: Sequence[np.ndarray], tail32: np.ndarray | None, seed: int, m: int
) -> np.ndarray:
    """XXH64 of m keys made of 8-byte ``lanes`` (k arrays of m) plus an optional 4-byte tail."""
    k = len(lanes)
    nbytes = 8 * k + (4 if tail32 is not None else 0)
    s = U64(seed & 0xFFFFFFFFFFFFFFFF)
    tmp = np.empty(m, dtype=U64)
    with np.errstate(over="ignore"):
        i = 0
        if nbytes >= 32:
            vs = [np.full(m, v, dtype=U64) for v in (s + P1 + P2, s + P2, s, s - P1)]
            while i + 4 <= k:
                for j in range(4):
                    _round_(vs[j], lanes[i + j], tmp)
                i += 4
            h = np.zeros(m, dtype=U64)
            for v, r in zip(vs, (1, 7, 12, 18), strict=True):
                np.add(h, _rotl_(v.copy(), r, tmp), out=h)
            for v in vs:
                v2 = _round_(np.zeros(m, dtype=U64), v, tmp)
                np.bitwise_xor(h, v2, out=h)
                np.multiply(h, P1, out=h)
                np.add(h, P4, out=h)
        else:
            h = np.full(m, s + P5, dtype=U64)
        np.add(h, U64(nbytes), out=h)
        k1 = np.empty(m, dtype=U64)
        while i < k:
            k1.fill(0)
            _round_(k1, lanes[i], tmp)
            np.bitwise_xor(h, k1, out=h)
            _rotl_(h, 27, tmp)
            np.multiply(h, P1, out=h)
            np.add(h, P4, out=h)
            i += 1
        if tail32 is not None:
            np.multiply(tail32.astype(U64), P1, out=tmp)
            np.bitwise_xor(h, tmp, out=h)
            _rotl_(h, 23, tmp)
            np.multiply(h, P2, out=h)
            np.add(h, P3, out=h)
        # avalanche
        for shift, prime in ((33, P2), (29, P3), (32, None)):
            np.right_shift(h, U64(shift), out=tmp)
            np.bitwise_xor(h, tmp, out=h)
            if prime is not None:
                np.multiply(h, prime, out=h)
        return h


def xxh64_lanes(lanes: Sequence[np.ndarray], seed: int = 0) -> np.ndarray:
    """XXH64 of keys given lane by lane: lane j of every key in ``lanes[j]`` (uint64).

    The fastest entry point: shifted views of one array (an n-gram window) need no copy.
    """
    lanes = [np.asarray(x, dtype=U64) for x in lanes]
    return _xxh64_lanes(lanes, None, seed, len(lanes[0]))


def xxh64_cols32(cols: Sequence[np.ndarray], seed: int = 0) -> np.ndarray:
    """XXH64 of keys given as k uint32 columns (4k little-endian bytes per key)."""
    k = len(cols)
    m = len(cols[0])
    lanes = [
        cols[2 * j].astype(U64) | (cols[2 * j + 1].astype(U64) << U64(32)) for j in range(k // 2)
    ]
    tail = cols[k - 1] if k % 2 else None
    return _xxh64_lanes(lanes, tail, seed, m)


def xxh64_u64(keys: np.ndarray, seed: int = 0) -> np.ndarray:
    """XXH64 of each row of a (m, k) uint64 array, read as 8k little-endian bytes."""
    keys = np.asarray(keys, dtype=U64)
    if keys.ndim != 2:
        raise ValueError("keys must be a 2-d array")
    return xxh64_lanes([np.ascontiguousarray(keys[:, j]) for j in range(keys.shape[1])], seed)


def xxh64_u32(keys: np.ndarray, seed: int = 0) -> np.ndarray:
    """XXH64 of each row of a (m, k) uint32 array, read as 4k little-endian bytes.

    With code points as the uint32 values this is the hash of the UTF-32-LE encoding.
    """
    keys = np.asarray(keys, dtype=np.uint32)
    if keys.ndim != 2:
        raise ValueError("keys must be a 2-d array")
    return xxh64_cols32([keys[:, j] for j in range(keys.shape[1])], seed)
