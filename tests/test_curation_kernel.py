"""The compiled dedup kernel (curation/kernel.py) against its numpy reference.

Signatures, clusters and kept rows must not depend on whether numba is installed,
so every compiled function must return exactly what the numpy code returns: the
shingle hashes on every script and edge (empty and None texts, texts shorter than
n, over-long tokens, NUL characters, character segmentation), the signatures, the
band keys, exact pair Jaccard, and the whole-row keys hashed from Arrow buffers (sliced arrays, nulls,
large strings, non-ASCII).
"""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest
import xxhash

from m2l_ray.curation import dedup, kernel, minhash, shingles
from m2l_ray.curation.dedup.arrays import gather_lists

pytestmark = pytest.mark.skipif(not kernel.available(), reason="numba is not installed")

CYRILLIC = "абвгдежзийклмнопрстуфхцчшщыэюя"
DEVANAGARI = "कखगघचछजझटठडढणतथदधनपफबभमयरलवशसह" + "ािीुूेैोौ्"


def _texts(seed: int = 5) -> list[str | None]:
    rng = random.Random(seed)
    out: list[str | None] = ["", None, "a", "a b", "one two three four", "\x00x\x00 y",
                             "x" * 100 + " y " + "z" * 49 + " " + "w" * 48,
                             "日本語のテキストです。これは", "สวัสดีครับ ผมชื่อ", "Ünïcödé ﬁ ＡＢＣ ½",
                             "hello, world! 123 ab " * 7]
    for _ in range(300):
        alphabet = rng.choice(["abcdefghij klmno,.", CYRILLIC + " ", DEVANAGARI + " ",
                               "".join(chr(rng.randint(0x4E00, 0x4E40)) for _ in range(20))])
        out.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 400))))
    return out


@pytest.mark.parametrize("mode", ["space", "char", "auto"])
@pytest.mark.parametrize("ngram", [1, 3, 5, 9])
def test_shingles_equal_the_numpy_reference(mode, ngram):
    texts = _texts()
    char = {"space": None, "char": np.ones(len(texts), bool), "auto": "auto"}[mode]
    got = shingles.shingle_hashes(texts, char, ngram=ngram, char_ngram=ngram, compiled=True)
    want = shingles.shingle_hashes(texts, char, ngram=ngram, char_ngram=ngram, compiled=False)
    assert len(want[0]) > len(texts)  # the corpus has shingles to compare
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("texts", [[], [""], [None, None]])
def test_empty_batches_equal_the_numpy_reference(texts):
    for mode in (None, "auto"):
        got = shingles.shingle_hashes(texts, mode, compiled=True)
        want = shingles.shingle_hashes(texts, mode, compiled=False)
        assert got[1].tolist() == want[1].tolist() == [0] * (len(texts) + 1)
        assert len(got[0]) == len(want[0]) == 0


@pytest.mark.parametrize("num_perm,bands,rows", [(140, 20, 7), (128, 16, 8), (9, 3, 3)])
def test_signatures_and_band_keys_equal_the_numpy_reference(num_perm, bands, rows):
    h, off = shingles.shingle_hashes(_texts(), "auto")
    a, b = minhash.permutations(num_perm, 11)
    sig = minhash.signatures(h, off, a, b, compiled=True)
    np.testing.assert_array_equal(sig, minhash.signatures(h, off, a, b, compiled=False))
    assert (sig == minhash.EMPTY).all(axis=1).sum() >= 2  # "" and None have no shingles
    np.testing.assert_array_equal(minhash.band_keys(sig, bands, rows, compiled=True),
                                  minhash.band_keys(sig, bands, rows, compiled=False))


def test_string_hashes_are_xxh64_of_the_utf8_bytes():
    rng = random.Random(2)
    values = ["".join(chr(rng.choice([rng.randint(32, 126), rng.randint(0xA0, 0x7FF),
                                      rng.randint(0x4E00, 0x9FFF)]))
                      for _ in range(n)) for n in range(0, 90)] + ["q" * 4097, None]
    values[3::11] = [None] * len(values[3::11])  # nulls inside every slice below
    for typ in (pa.string(), pa.large_string()):
        arr = pa.array(values, typ)
        for part in (arr, arr.slice(7, 50), arr.slice(80)):
            got = kernel.string_hashes(part, 17, 99)
            want = [99 if v is None else xxhash.xxh64_intdigest(v.encode("utf-8"), 17)
                    for v in part.to_pylist()]
            assert got.tolist() == want


def test_whole_row_keys_do_not_depend_on_the_kernel(monkeypatch):
    t = pa.table({
        "text": pa.chunked_array([["a\"b", None, "x", "a\"b"], ["日本", ""]]),
        "n": [1, None, 3, 1, 5, 6],
        "tags": [["p"], None, [], ["p"], ["q"], ["r"]],
        "wide": pa.array(["q", "r", None, "q", "s", "t"], pa.large_string()),
    })
    compiled = dedup.row_keys(t, None)
    monkeypatch.setattr(kernel, "available", lambda: False)
    np.testing.assert_array_equal(compiled, dedup.row_keys(t, None))
    assert compiled[0] == compiled[3]  # identical rows, one node
    assert len(set(compiled.tolist())) == 5


def test_pair_jaccard_equals_the_numpy_reference():
    h, off = shingles.shingle_hashes(_texts(), "auto")
    h = h.copy()
    h[off[20]:off[21]] = h[off[30]:off[31]][: off[21] - off[20]]  # some overlap
    rng = np.random.default_rng(4)
    n = len(off) - 1
    ia, ib = rng.integers(0, n, 500), rng.integers(0, n, 500)
    ia[:3], ib[:3] = [20, 0, 5], [30, 1, 5]  # overlapping, empty, identical
    got = kernel.pair_jaccard(h, off, ia, ib)
    va, oa = gather_lists(h, off, ia)
    vb, ob = gather_lists(h, off, ib)
    want = minhash.pair_jaccard(va, oa, vb, ob)
    np.testing.assert_array_equal(got, want)
    assert 0 < got[0] < 1 and got[1] == 0.0 and got[2] == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_components_match_scipy(seed, monkeypatch):
    """Union-find roots equal scipy's connected components (smallest node each)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 10**12, 3000)
    b = np.where(rng.random(3000) < 0.5, a, rng.integers(0, 10**12, 3000))
    k = len(a[::7])
    b[: 3 * k : 3] = a[::7]  # long chains across the edges
    nodes_k, roots_k = dedup.components_local(a, b)
    monkeypatch.setattr(kernel, "available", lambda: False)
    nodes_s, roots_s = dedup.components_local(a, b)
    assert (nodes_k == nodes_s).all()
    assert (roots_k == roots_s).all()
    assert len(np.unique(roots_k)) < len(nodes_k)  # some components merged nodes
