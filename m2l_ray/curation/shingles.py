"""Shingle hashes of a whole batch of texts, without a Python loop per word or shingle.

A batch is normalised (NFKC, lower case) and joined into one string, which becomes
one array of code points. Word boundaries, token hashes and n-gram hashes are then
array operations:

* a token is a maximal run of word characters (Unicode letters, marks and numbers,
  so that Devanagari vowel signs or Thai tone marks stay inside their word);
* a token's hash is XXH64 of its UTF-32-LE code points; tokens are grouped by
  length so that each group is one fixed-width matrix for ``xxh.xxh64_u32``;
* a word n-gram's hash is XXH64 of its n token hashes (``xxh64_u64``);
* languages written without spaces (Chinese, Japanese, Thai, ...) use n-grams of
  word characters instead (``xxh64_u32`` of n code points), so punctuation and
  spacing changes do not matter there either.

A text with fewer tokens (characters) than n gets one shingle of all of them; an
empty text gets none. The Python-level work per batch is one ``str.join``, one
``unicodedata.normalize`` and one ``encode``, whatever the batch size.
"""

from __future__ import annotations

import functools
import os
import unicodedata
from collections.abc import Sequence
from importlib import resources

import numpy as np
import yaml

from m2l_ray.curation import kernel
from m2l_ray.curation.xxh import xxh64_cols32, xxh64_lanes

TOKEN_SEED = 0x6D326C
WORD_SEED = 0x77
CHAR_SEED = 0x63
#: Tokens longer than this many code points are hashed by their first MAX_TOKEN
#: code points and their length (long URLs and numbers; rare in prose).
MAX_TOKEN = 48


@functools.cache
def word_table() -> np.ndarray:
    """uint8 lookup over all code points: 1 for letters, marks and numbers.

    Building it asks ``unicodedata`` about 1.1 million code points (0.3 s, a tenth
    of a whole ``m2l dedup`` run on 100K documents), so it is kept on disk, keyed by
    the Unicode version, and rebuilt only when that file is missing or unreadable.
    """
    path = _cache_file(f"word-table-{unicodedata.unidata_version}.npy")
    if path is not None:
        try:
            bits = np.load(path, allow_pickle=False)
            table = np.unpackbits(bits)[:0x110000]
            if len(table) == 0x110000:
                return table
        except (OSError, ValueError):
            pass
    table = np.zeros(0x110000, dtype=np.uint8)
    cat = unicodedata.category
    for cp in range(0x110000):
        if cat(chr(cp))[0] in "LMN":
            table[cp] = 1
    if path is not None:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as fh:
                np.save(fh, np.packbits(table), allow_pickle=False)
            os.replace(tmp, path)
        except OSError:  # a read-only home: build it every time
            pass
    return table


def _cache_file(name: str) -> str | None:
    """``$M2L_CACHE_DIR`` (or ``$XDG_CACHE_HOME/m2l``, ``~/.cache/m2l``) / name."""
    root = os.environ.get("M2L_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "m2l")
    return os.path.join(root, name) if root and not root.startswith("~") else None


@functools.cache
def char_script_table() -> np.ndarray:
    """uint8 lookup over all code points: 1 for letters of scripts written without spaces.

    The scripts are the registry's CHAR_SEGMENTED_SCRIPTS, their ranges those of
    data/scripts.yaml (composites such as Jpan resolved through ``includes``).
    """
    from m2l_ray.languages import CHAR_SEGMENTED_SCRIPTS

    data = yaml.safe_load(
        resources.files("m2l_ray").joinpath("data", "scripts.yaml").read_text("utf-8")
    )
    table = np.zeros(0x110000, dtype=np.uint8)
    todo, seen = list(CHAR_SEGMENTED_SCRIPTS), set()
    while todo:
        code = todo.pop()
        if code in seen or code not in data:
            continue
        seen.add(code)
        spec = data[code]
        todo.extend(spec.get("includes", ()))
        for start, end in spec.get("ranges", ()):
            table[start : end + 1] = 1
    return table


def auto_char_mode(cps: np.ndarray, spans: np.ndarray, min_share: float = 0.3) -> np.ndarray:
    """Per text: True when at least ``min_share`` of its word characters are in a script
    written without spaces (for data sets without a language column)."""
    n_docs = len(spans)
    word = word_table()[cps].astype(bool)
    cjk = char_script_table()[cps].astype(bool) & word
    doc_of = np.repeat(np.arange(n_docs), spans[:, 1] - spans[:, 0] + 1)[: len(cps)]
    n_word = np.bincount(doc_of[word], minlength=n_docs)
    n_cjk = np.bincount(doc_of[cjk], minlength=n_docs)
    return n_cjk >= min_share * np.maximum(n_word, 1)


def normalise_batch(texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """Code points of the normalised batch and each text's [start, end) in them.

    Texts are joined with NUL (a non-word character), so no token spans two texts.
    """
    clean = ["" if t is None else (t.replace("\x00", " ") if "\x00" in t else t) for t in texts]
    joined = unicodedata.normalize("NFKC", "\x00".join(clean)).lower()
    cps = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
    seps = np.flatnonzero(cps == 0)
    starts = np.concatenate([[0], seps + 1]).astype(np.int64)
    ends = np.concatenate([seps, [len(cps)]]).astype(np.int64)
    return cps, np.stack([starts, ends], axis=1)


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) indices of the runs of True in ``mask``."""
    edge = np.empty(len(mask) + 1, dtype=bool)
    edge[0] = mask[0] if len(mask) else False
    edge[-1] = mask[-1] if len(mask) else False
    np.not_equal(mask[1:], mask[:-1], out=edge[1:-1])
    pos = np.flatnonzero(edge)
    return pos[0::2], pos[1::2]


def _token_hashes(cps: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """XXH64 of each token's code points, one vectorised call per distinct length."""
    out = np.empty(len(starts), dtype=np.uint64)
    capped = np.minimum(lengths, MAX_TOKEN).astype(np.uint8)
    order = np.argsort(capped, kind="stable")  # radix sort on uint8
    bounds = np.flatnonzero(np.diff(capped[order])) + 1
    for grp in np.split(order, bounds):
        if not len(grp):
            continue
        width = int(capped[grp[0]])
        st = starts[grp]
        h = xxh64_cols32([cps[st + j] for j in range(width)], seed=TOKEN_SEED)
        long_ = lengths[grp] > MAX_TOKEN
        if long_.any():  # fold the true length into over-long tokens
            h[long_] = xxh64_lanes([h[long_], lengths[grp][long_].astype(np.uint64)])
        out[grp] = h
    return out


def _ngrams(
    values: np.ndarray, doc: np.ndarray, n: int, hasher, seed: int, n_docs: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the n-grams of ``values`` that stay inside one document.

    ``values`` are ordered by document; documents with fewer than n values get one
    shingle of all their values. ``hasher`` takes a list of per-position columns.
    Returns (hashes uint64, document index).
    """
    if len(values) == 0:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    hashes, docs = [], []
    m = len(values) - n + 1
    if m > 0:
        ok = doc[:m] == doc[n - 1 :]
        h = hasher([values[j : j + m] for j in range(n)], seed=seed)
        hashes.append(h[ok])
        docs.append(doc[:m][ok])
    counts = np.bincount(doc, minlength=n_docs)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for k in range(1, n):
        short = np.flatnonzero(counts == k)
        if len(short):
            st = first[short]
            hashes.append(hasher([values[st + j] for j in range(k)], seed=seed))
            docs.append(short.astype(np.int64))
    return np.concatenate(hashes), np.concatenate(docs)


def shingle_hashes(
    texts: Sequence[str | None],
    char_mode: np.ndarray | str | None = None,
    *,
    ngram: int = 5,
    char_ngram: int = 5,
    compiled: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """32-bit shingle hashes of every text, grouped by text.

    ``char_mode[i]`` True means text i is shingled by character n-grams (a language
    written without spaces); None means all texts use word n-grams, "auto" decides
    per text from its script (``auto_char_mode``). Returns
    (hashes uint32 of length S, offsets int64 of length len(texts) + 1); text i's
    shingles are ``hashes[offsets[i]:offsets[i + 1]]`` (not deduplicated).
    ``compiled`` picks the numba kernel (default: when available) or the numpy code
    below, which is its reference: both return the same arrays.
    """
    n_docs = len(texts)
    cps, spans = normalise_batch(texts)
    if char_mode is None:
        char_mode = np.zeros(n_docs, dtype=bool)
    elif isinstance(char_mode, str):
        char_mode = auto_char_mode(cps, spans)
    char_mode = np.asarray(char_mode, dtype=bool)
    if kernel.available() if compiled is None else compiled:
        # spans[:n_docs]: an empty batch still joins to one (empty) span
        return kernel.shingle_hashes(cps, word_table(), spans[:n_docs], char_mode, ngram,
                                     char_ngram,
                                     (TOKEN_SEED, WORD_SEED, CHAR_SEED), MAX_TOKEN)
    word = word_table().view(bool)[cps]
    any_char = bool(char_mode.any())
    doc_of = None
    if any_char:  # per code point document index, only needed to split by mode
        doc_of = np.repeat(np.arange(n_docs, dtype=np.int64),
                           spans[:, 1] - spans[:, 0] + 1)[: len(cps)]
    parts_h, parts_d = [], []
    if not char_mode.all():
        wmask = word & ~char_mode[doc_of] if any_char else word
        t_start, t_end = _runs(wmask)
        if len(t_start):
            th = _token_hashes(cps, t_start, t_end - t_start)
            t_doc = np.searchsorted(spans[:, 0], t_start, side="right") - 1
            h, d = _ngrams(th, t_doc, ngram, xxh64_lanes, WORD_SEED, n_docs)
            parts_h.append(h)
            parts_d.append(d)
    if any_char:
        cmask = word & char_mode[doc_of]
        seq = cps[cmask]
        h, d = _ngrams(seq, doc_of[cmask], char_ngram, xxh64_cols32, CHAR_SEED, n_docs)
        parts_h.append(h)
        parts_d.append(d)
    if parts_h:
        h = np.concatenate(parts_h)
        d = np.concatenate(parts_d)
    else:
        h, d = np.empty(0, np.uint64), np.empty(0, np.int64)
    if len(d) > 1 and not bool((d[1:] >= d[:-1]).all()):
        order = np.argsort(d, kind="stable")
        h, d = h[order], d[order]
    h32 = (h >> np.uint64(32)).astype(np.uint32)
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(np.bincount(d, minlength=n_docs), out=offsets[1:])
    return h32, offsets


def unique_per_doc(hashes: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct shingles of each text (sets, as Jaccard needs), same layout."""
    n_docs = len(offsets) - 1
    doc = np.repeat(np.arange(n_docs, dtype=np.uint64), np.diff(offsets))
    key = np.unique((doc << np.uint64(32)) | hashes.astype(np.uint64))
    d = (key >> np.uint64(32)).astype(np.int64)
    out_off = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(np.bincount(d, minlength=n_docs), out=out_off[1:])
    return (key & np.uint64(0xFFFFFFFF)).astype(np.uint32), out_off


def reference_tokens(text: str) -> list[str]:
    """Pure-Python tokenizer with the same rules, for tests and the benchmark's truth."""
    t = unicodedata.normalize("NFKC", text.replace("\x00", " ")).lower()
    table = word_table()
    out, cur = [], []
    for ch in t:
        if table[ord(ch)]:
            cur.append(ch)
        elif cur:
            out.append("".join(cur))
            cur = []
    if cur:
        out.append("".join(cur))
    return out
