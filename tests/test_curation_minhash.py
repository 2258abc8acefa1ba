"""The numpy kernels of dedup: XXH64, shingles, MinHash, LSH parameters, components."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest
import xxhash

from m2l_ray.curation import dedup, minhash, shingles
from m2l_ray.curation.dedup import candidates, components
from m2l_ray.curation.xxh import xxh64_lanes, xxh64_u32, xxh64_u64


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17])
def test_xxh64_is_bit_exact(k):
    rng = np.random.default_rng(k)
    a32 = rng.integers(0, 2**32, (40, k), dtype=np.uint64).astype(np.uint32)
    a64 = rng.integers(0, 2**63, (40, k), dtype=np.uint64) * np.uint64(3)
    for seed in (0, 12345, 2**64 - 1):
        assert [int(x) for x in xxh64_u32(a32, seed)] == [
            xxhash.xxh64_intdigest(r.tobytes(), seed=seed) for r in a32]
        assert [int(x) for x in xxh64_u64(a64, seed)] == [
            xxhash.xxh64_intdigest(r.tobytes(), seed=seed) for r in a64]
    cols = [np.ascontiguousarray(a64[:, j]) for j in range(k)]
    assert np.array_equal(xxh64_lanes(cols, 7), xxh64_u64(a64, 7))


def _reference_shingles(text: str, char: bool, n: int) -> set[int]:
    """Shingle hashes the slow, obvious way (xxhash per token and per shingle)."""
    toks = shingles.reference_tokens(text)
    if char:
        seq = [ord(c) for t in toks for c in t]
        grams = [seq[i:i + n] for i in range(len(seq) - n + 1)] or ([seq] if seq else [])
        return {xxhash.xxh64_intdigest(np.array(g, np.uint32).tobytes(),
                                       seed=shingles.CHAR_SEED) >> 32 for g in grams}
    th = []
    for t in toks:
        h = xxhash.xxh64_intdigest(np.array([ord(c) for c in t[:shingles.MAX_TOKEN]],
                                            np.uint32).tobytes(), seed=shingles.TOKEN_SEED)
        if len(t) > shingles.MAX_TOKEN:
            h = xxhash.xxh64_intdigest(np.array([h, len(t)], np.uint64).tobytes())
        th.append(h)
    grams = [th[i:i + n] for i in range(len(th) - n + 1)] or ([th] if th else [])
    return {xxhash.xxh64_intdigest(np.array(g, np.uint64).tobytes(),
                                   seed=shingles.WORD_SEED) >> 32 for g in grams}


TEXTS = [
    ("The quick brown fox jumps over the lazy dog, again and again.", False),
    ("", False),
    ("one", False),
    ("two words", False),
    ("नमस्ते दुनिया, यह एक परीक्षण है जिसमें मात्राएँ शब्दों के अंदर रहती हैं।", False),
    ("这是一个测试文本，用于检查字符分词是否正确。", True),
    ("ภาษาไทยเขียนติดกันโดยไม่มีช่องว่างระหว่างคำ", True),
    ("x" * 70 + " followed by a few normal words here", False),
    ("!!! ??? ...", False),
]


def test_vectorised_shingles_equal_reference():
    char = np.array([c for _, c in TEXTS])
    h, off = shingles.shingle_hashes([t for t, _ in TEXTS], char, ngram=3, char_ngram=4)
    for i, (text, is_char) in enumerate(TEXTS):
        got = set(int(x) for x in h[off[i]:off[i + 1]])
        assert got == _reference_shingles(text, is_char, 4 if is_char else 3), text


def test_marks_stay_inside_words():
    assert shingles.reference_tokens("यह परीक्षण है") == ["यह", "परीक्षण", "है"]
    assert shingles.reference_tokens("ﬁrst ＦＵＬＬ width") == ["first", "full", "width"]


def test_case_whitespace_and_punctuation_do_not_change_shingles():
    a = "Hello world, this is a test of shingles."
    b = "HELLO   world\n\nthis is a TEST of shingles"
    h, off = shingles.shingle_hashes([a, b], ngram=3)
    assert set(h[off[0]:off[1]]) == set(h[off[1]:off[2]])


def test_auto_segmentation_picks_characters_for_cjk_and_thai():
    texts = ["plain english words", "这是中文文本", "ภาษาไทย", "日本語のテキスト",
             "한국어 문장입니다"]
    cps, spans = shingles.normalise_batch(texts)
    got = shingles.auto_char_mode(cps, spans).tolist()
    assert got == [False, True, True, True, False]


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def test_minhash_estimates_are_unbiased_with_binomial_variance():
    rng = np.random.default_rng(3)
    a, b = minhash.permutations(128, seed=1)
    errs, sds = [], []
    for true_j in (0.5, 0.8, 0.9):
        ests = []
        for _ in range(300):
            n = 200
            common = int(round(2 * true_j * n / (1 + true_j)))
            u = rng.integers(0, 2**32, 2 * n, dtype=np.uint64).astype(np.uint32)
            x = u[:n]
            y = np.concatenate([u[:common], u[n:2 * n - common]])
            h = np.concatenate([x, y])
            off = np.array([0, len(x), len(x) + len(y)])
            sig = minhash.signatures(h, off, a, b)
            j = len(np.intersect1d(x, y)) / len(np.union1d(x, y))
            ests.append((sig[0] == sig[1]).mean() - j)
        errs.append(abs(np.mean(ests)))
        sds.append(np.std(ests) / np.sqrt(true_j * (1 - true_j) / 128))
    assert max(errs) < 0.01
    assert all(0.8 < s < 1.2 for s in sds)


def test_signatures_of_empty_documents_and_chunking():
    a, b = minhash.permutations(16, seed=2)
    rng = np.random.default_rng(0)
    lens = [0, 5, 0, 40000, 3, 0]  # one document larger than a chunk
    h = rng.integers(0, 2**32, sum(lens), dtype=np.uint64).astype(np.uint32)
    off = np.concatenate([[0], np.cumsum(lens)])
    sig = minhash.signatures(h, off, a, b)
    for i, n in enumerate(lens):
        x = h[off[i]:off[i + 1]]
        want = (a * x[None, :] + b).min(axis=1) if n else np.full(16, minhash.EMPTY)
        assert np.array_equal(sig[i], want)


def test_lsh_params_reach_recall_target():
    for t in (0.7, 0.8, 0.9):
        p = minhash.lsh_params(t)
        assert p.bands * p.rows <= p.num_perm <= 256
        assert p.candidate_probability(t) >= 0.99
        assert p.candidate_probability(t - 0.2) <= 0.5
    explicit = minhash.lsh_params(0.8, 128)
    assert explicit.num_perm == 128 and explicit.bands * explicit.rows <= 128
    fixed = minhash.lsh_params(0.8, bands=10, rows=5)
    assert (fixed.bands, fixed.rows, fixed.num_perm) == (10, 5, 50)
    # without verification: datasketch's balanced objective (9 x 13 at 0.8, 128 perms)
    unverified = minhash.lsh_params(0.8, verified=False)
    assert (unverified.bands, unverified.rows) == (9, 13)


def test_pair_jaccard_matches_sets():
    rng = random.Random(5)
    sets = [sorted({rng.randrange(60) for _ in range(rng.randrange(0, 30))}) for _ in range(50)]
    pairs = [(rng.randrange(50), rng.randrange(50)) for _ in range(200)]

    def flat(idx):
        vals = np.array([v for i in idx for v in sets[i]], np.uint32)
        off = np.concatenate([[0], np.cumsum([len(sets[i]) for i in idx])])
        return vals, off

    va, oa = flat([p[0] for p in pairs])
    vb, ob = flat([p[1] for p in pairs])
    got = minhash.pair_jaccard(va, oa, vb, ob)
    # repeated values (raw shingles of a text) count once
    twice = minhash.pair_jaccard(np.repeat(va, 2), oa * 2, vb, ob)
    assert np.array_equal(got, twice)
    for (i, j), g in zip(pairs, got, strict=True):
        a, b = set(sets[i]), set(sets[j])
        assert g == pytest.approx(len(a & b) / len(a | b) if a | b else 0.0)


def test_unique_per_doc():
    h = np.array([5, 3, 5, 9, 9, 1], np.uint32)
    off = np.array([0, 3, 3, 6])
    vals, o = shingles.unique_per_doc(h, off)
    assert vals.tolist() == [3, 5, 1, 9] and o.tolist() == [0, 2, 2, 4]


def _random_graph(seed: int, n: int = 300, m: int = 260):
    rng = np.random.default_rng(seed)
    nodes = rng.choice(2**40, n, replace=False).astype(np.int64) - 2**39
    a = nodes[rng.integers(0, n, m)]
    b = nodes[rng.integers(0, n, m)]
    keep = a != b
    return a[keep], b[keep]


def _naive_roots(a, b):
    parent: dict[int, int] = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        rx, ry = find(x), find(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    return {x: find(x) for x in parent}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_components_local_roots_are_component_minima(seed):
    a, b = _random_graph(seed)
    nodes, roots = dedup.components_local(a, b)
    want = _naive_roots(a, b)
    assert dict(zip(nodes.tolist(), roots.tolist(), strict=True)) == want


@pytest.mark.parametrize("seed", [0, 3])
def test_star_rounds_converge_to_component_minima(seed):
    """The distributed algorithm's per-block steps, run on one block until stable."""
    a, b = _random_graph(seed)
    cur = pa.table({"a": a, "b": b})
    for _ in range(50):
        large = components._large_star(components._both_directions(cur))
        small = components._small_star(components._max_min(large))
        changes = int(np.sum(small.column("changed")))  # carries the large step's too
        cur = small.select(["a", "b"])
        if changes == 0:
            break
    assert changes == 0
    leaf = cur.column("a").to_numpy()
    root = cur.column("b").to_numpy()
    got = dict(zip(leaf.tolist(), root.tolist(), strict=True))
    got.update({r: r for r in root.tolist()})
    assert got == _naive_roots(a, b)


def test_bucket_star_edges():
    k = np.array([7, 7, 7, 3, 3, 9, 7], np.int64)
    v = np.array([50, 10, 30, 8, 8, 1, 10], np.int64)
    a, b = candidates._star_edges(k, v)
    assert sorted(zip(a.tolist(), b.tolist(), strict=True)) == [(10, 30), (10, 50)]
