"""MinHash signatures, LSH banding and their parameters, vectorised over batches.

Permutations are ``h_i(x) = a_i * x + b_i mod 2**32`` (a_i odd) over 32-bit
shingle hashes that are already uniformly distributed (the top half of XXH64): a
bijection per i, cheap in numpy, and as accurate as ideal random permutations for
Jaccard estimation (tests/test_curation_minhash.py measures bias and variance
against exact Jaccard). A batch of S shingles and P permutations is one (P, S)
multiply-add and one ``minimum.reduceat``, processed in cache-sized chunks.

``lsh_params`` derives bands x rows from the target threshold: the smallest
num_perm whose best banding makes a pair at the threshold a candidate with
probability >= recall_target, while a pair ``margin`` below the threshold becomes
one with probability <= max_false (those are removed again by the verification
step, so they only cost time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m2l_ray.curation import kernel
from m2l_ray.curation.xxh import xxh64_u32

EMPTY = np.uint32(0xFFFFFFFF)
_CHUNK = 1 << 14  # shingles per (P, chunk) block: about 8 MB at P = 128


@dataclass(frozen=True)
class LshParams:
    num_perm: int
    bands: int
    rows: int
    threshold: float

    def candidate_probability(self, j: float) -> float:
        """Chance that a pair with Jaccard j shares at least one band."""
        return 1.0 - (1.0 - j**self.rows) ** self.bands


def _p_candidate(j: float, b: int, r: int) -> float:
    return 1.0 - (1.0 - j**r) ** b


def _weighted_error(t: float, b: int, r: int) -> float:
    """datasketch's objective: false-positive plus false-negative area, equal weights."""
    steps = 200
    fp = sum(_p_candidate(t * (i + 0.5) / steps, b, r) for i in range(steps)) * t / steps
    w = 1.0 - t
    fn = sum(1 - _p_candidate(t + w * (i + 0.5) / steps, b, r) for i in range(steps)) * w / steps
    return 0.5 * fp + 0.5 * fn


def lsh_params(
    threshold: float,
    num_perm: int | None = None,
    bands: int | None = None,
    rows: int | None = None,
    *,
    verified: bool = True,
    recall_target: float = 0.99,
    margin: float = 0.2,
    max_false: float = 0.5,
    max_perm: int = 256,
) -> LshParams:
    """Bands x rows (and num_perm when not given) for a Jaccard threshold.

    With ``verified`` (candidates are checked before they join a cluster) recall is
    what banding must provide: see the module docstring. Without verification the
    band output is final, and the banding minimises datasketch's equal-weight
    false-positive + false-negative area instead, at num_perm (default 128).
    """
    if bands is not None and rows is not None:
        return LshParams(max(num_perm or 0, bands * rows), bands, rows, threshold)
    t = threshold
    low = max(t - margin, 0.0)

    def best_for(p: int) -> tuple[int, int, bool]:
        if not verified:
            b, r = min(
                ((b, r) for r in range(1, p + 1) for b in [p // r] if b >= 1),
                key=lambda br: (_weighted_error(t, *br), -br[0] * br[1]),
            )
            return b, r, True
        feasible, fallback = [], []
        for r in range(1, p + 1):
            b = p // r
            if b < 1:
                break
            rec, fal = _p_candidate(t, b, r), _p_candidate(low, b, r)
            fallback.append((fal > max_false, -rec, fal, b, r))
            if fal <= max_false:
                feasible.append((-(rec >= recall_target), -rec if rec < recall_target else fal,
                                 b * r, b, r, rec))
        if feasible:
            _, _, _, b, r, rec = min(feasible)
            return b, r, rec >= recall_target
        _, _, _, b, r = min(fallback)
        return b, r, False

    if num_perm is not None:
        b, r, _ = best_for(num_perm)
        return LshParams(num_perm, b, r, t)
    if not verified:
        b, r, _ = best_for(128)
        return LshParams(128, b, r, t)
    # smallest num_perm (multiple of 8) that reaches the recall target
    for p in range(16, max_perm + 1, 8):
        b, r, ok = best_for(p)
        if ok:
            return LshParams(b * r, b, r, t)
    b, r, _ = best_for(max_perm)
    return LshParams(b * r, b, r, t)


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) uint32 arrays of shape (num_perm, 1); a is odd so h_i is a bijection."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 32, size=num_perm, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
    b = rng.integers(0, 1 << 32, size=num_perm, dtype=np.uint64).astype(np.uint32)
    return a[:, None], b[:, None]


def signatures(
    hashes: np.ndarray, offsets: np.ndarray, a: np.ndarray, b: np.ndarray,
    *, compiled: bool | None = None,
) -> np.ndarray:
    """(n_docs, num_perm) uint32 MinHash signatures; documents without shingles get EMPTY.

    ``compiled`` as in ``shingles.shingle_hashes``: the numba kernel or this numpy
    reference, same result."""
    if kernel.available() if compiled is None else compiled:
        return kernel.signatures(hashes, offsets, a, b)
    n_docs = len(offsets) - 1
    num_perm = a.shape[0]
    sig = np.full((n_docs, num_perm), EMPTY, dtype=np.uint32)
    counts = np.diff(offsets)
    docs = np.flatnonzero(counts > 0)
    if not len(docs):
        return sig
    hashes = np.ascontiguousarray(hashes, dtype=np.uint32)
    buf = np.empty((num_perm, max(_CHUNK, int(counts.max()))), dtype=np.uint32)
    i = 0
    while i < len(docs):
        # as many whole documents as fit in one chunk (at least one)
        lo = offsets[docs[i]]
        j = int(np.searchsorted(offsets[docs + 1], lo + _CHUNK, side="right"))
        j = max(j, i + 1)
        hi = offsets[docs[j - 1] + 1]
        x = hashes[lo:hi]
        view = buf[:, : hi - lo]
        np.multiply(a, x[None, :], out=view)
        np.add(view, b, out=view)
        starts = offsets[docs[i:j]] - lo
        sig[docs[i:j]] = np.minimum.reduceat(view, starts, axis=1).T
        i = j
    return sig


def band_keys(sig: np.ndarray, bands: int, rows: int, *, compiled: bool | None = None
              ) -> np.ndarray:
    """(n_docs, bands) int64 bucket keys: XXH64 of each band's rows, seeded by band index."""
    if kernel.available() if compiled is None else compiled:
        return kernel.band_keys(sig, bands, rows)
    n = sig.shape[0]
    out = np.empty((n, bands), dtype=np.uint64)
    for j in range(bands):
        out[:, j] = xxh64_u32(sig[:, j * rows : (j + 1) * rows], seed=j + 1)
    return out.view(np.int64)


def jaccard_sorted(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of two sorted distinct arrays (for tests and small checks)."""
    inter = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - inter
    return inter / union if union else 0.0


def pair_jaccard(
    a_vals: np.ndarray, a_off: np.ndarray, b_vals: np.ndarray, b_off: np.ndarray
) -> np.ndarray:
    """Exact Jaccard of many pairs of shingle sets at once.

    Pair k is ``a_vals[a_off[k]:a_off[k+1]]`` vs ``b_vals[b_off[k]:b_off[k+1]]``
    (repeated values allowed: each side is made a set first). Intersections are
    counted by sorting (pair, value) keys of both sides together: a value present on
    both sides of one pair appears twice in a row.
    """
    n = len(a_off) - 1
    if n == 0:
        return np.empty(0, dtype=np.float64)

    def side(vals: np.ndarray, off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pair = np.repeat(np.arange(n, dtype=np.uint64), np.diff(off))
        keys = np.sort((pair << np.uint64(32)) | vals.astype(np.uint64))
        keep = np.ones(len(keys), dtype=bool)
        keep[1:] = keys[1:] != keys[:-1]
        keys = keys[keep]
        sizes = np.bincount((keys >> np.uint64(32)).astype(np.int64), minlength=n)
        return keys, sizes

    ka, na = side(a_vals, a_off)
    kb, nb = side(b_vals, b_off)
    keys = np.sort(np.concatenate([ka, kb]))
    dup = keys[1:] == keys[:-1]
    inter = np.bincount((keys[1:][dup] >> np.uint64(32)).astype(np.int64), minlength=n)
    union = na + nb - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def signature_jaccard(sa: np.ndarray, sb: np.ndarray) -> np.ndarray:
    """Estimated Jaccard of pairs of signatures (rows of sa vs rows of sb)."""
    both_empty = (sa == EMPTY).all(axis=1) | (sb == EMPTY).all(axis=1)
    est = (sa == sb).mean(axis=1)
    return np.where(both_empty, 0.0, est)


def describe(p: LshParams) -> str:
    """One line for summaries: the banding and its S-curve at a few similarities."""
    pts = ", ".join(f"P({j:.2f})={p.candidate_probability(j):.3f}"
                    for j in (p.threshold - 0.2, p.threshold - 0.1, p.threshold))
    return f"num_perm={p.num_perm} bands={p.bands} rows={p.rows} ({pts})"

