"""Stage 1 of dedup: what to hash (``TextSpec``), each row's node, and its MinHash band keys.

The node (XXH64 of the row's key, else of the whole row) decides which member of a
cluster survives (the smallest), so the choice depends on content, not on how blocks
were cut. Shingles, MinHash and band keys are computed for a whole chunk at once
(shingles.py, minhash.py); ``verify_payload`` recomputes what verification compares for the
few rows that are candidates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash

from m2l_ray.curation import kernel, minhash, shingles
from m2l_ray.curation.config import DEDUP_FIELDS, DedupConfig
from m2l_ray.curation.dedup.arrays import as_table, list_arrays, list_column, to_numpy
from m2l_ray.curation.textnorm import field_text
from m2l_ray.curation.xxh import xxh64_lanes

ROW = "_m2l_row"
NODE = "_m2l_node"
#: Columns the signature pass adds to every row; the final assignment removes them.
HELPERS = (ROW, NODE, "_bk", "_nsh", "_el")
FROM_CONFIG = "\x00from-config"  # key_field default: use DedupConfig.key_field


@dataclass(frozen=True)
class TextSpec:
    """What to hash and how to cut it into shingles, resolved on the driver."""

    column: str  # the column holding the text
    field: str  # DEDUP_FIELDS value or the column name
    segmentation: str  # "lang" (per row from language_field), "auto", "space", "char"
    language_field: str | None = None
    char_languages: frozenset[str] = frozenset()  # codes (lowercase) segmented by char
    known_languages: frozenset[str] = frozenset()
    key_field: str | None = None
    eligible_field: str | None = None  # bool column: False rows take no part
    ngram: int = 5
    char_ngram: int = 5
    num_perm: int = 128
    bands: int = 16
    rows: int = 8
    seed: int = 1
    payload: str = "exact"  # what verification compares: "exact" shingles, "signature"


def text_spec(cfg: DedupConfig, *, column: str | None = None, registry: Any = None,
              language_field: str | None = None, eligible_field: str | None = None,
              key_field: str | None = FROM_CONFIG) -> tuple[TextSpec, minhash.LshParams]:
    """Resolve the text column, segmentation and LSH parameters on the driver."""
    field_name = cfg.field
    col = column or ("conversation" if field_name in DEDUP_FIELDS else field_name)
    seg = cfg.segmentation
    char_langs: set[str] = set()
    known: set[str] = set()
    if seg == "registry":
        if registry is None or language_field is None:
            seg = "auto"
        else:
            seg = "lang"
            for lang in registry:
                keys = {lang.code.lower(), *(x.lower() for x in lang.aliases)}
                known |= keys
                if lang.segmentation == "char":
                    char_langs |= keys
    params = minhash.lsh_params(
        cfg.threshold, cfg.num_perm, cfg.bands, cfg.rows, verified=cfg.verify != "none",
        recall_target=cfg.recall_target, margin=cfg.false_candidate_margin,
        max_false=cfg.max_false_candidate)
    spec = TextSpec(
        column=col, field=field_name, segmentation=seg, language_field=language_field,
        char_languages=frozenset(char_langs), known_languages=frozenset(known),
        key_field=cfg.key_field if key_field == FROM_CONFIG else key_field,
        eligible_field=eligible_field, ngram=cfg.ngram, char_ngram=cfg.char_ngram,
        num_perm=params.num_perm, bands=params.bands, rows=params.rows, seed=cfg.seed,
        payload=cfg.verify)
    return spec, params


#: One encoder for all rows: json.dumps with non-default options builds a new
#: encoder per call, which doubled the cost of hashing whole rows.
_ROW_JSON = json.JSONEncoder(sort_keys=True, default=str, ensure_ascii=False)
#: Seeds of the whole-row key: each column's value hashes, then the row of them.
_ROW_SEED = 0x726F77
_NULL_HASH = 0x6E756C6C


def _value_hashes(col: pa.ChunkedArray, seed: int) -> np.ndarray:
    """uint64 per value: XXH64 (with ``seed``) of a string's UTF-8 bytes, of other
    values' JSON (``_ROW_JSON``); ``_NULL_HASH`` for nulls.

    Strings are hashed straight from the Arrow buffers by the compiled kernel when it
    is there: a JSON encoder call per row cost 6 µs a row, the largest single cost of
    hashing 100K rows, and it held the GIL the hashing threads need."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        if kernel.available():
            parts = [kernel.string_hashes(c, seed, _NULL_HASH) for c in col.chunks]
            return np.concatenate(parts) if parts else np.empty(0, np.uint64)
        vals = [None if v is None else v.encode("utf-8") for v in col.to_pylist()]
    else:
        enc = _ROW_JSON.encode
        vals = [None if v is None else enc(v).encode("utf-8") for v in col.to_pylist()]
    return np.fromiter((_NULL_HASH if v is None else xxhash.xxh64_intdigest(v, seed)
                        for v in vals), dtype=np.uint64, count=len(vals))


def row_keys(table: pa.Table, key_field: str | None) -> np.ndarray:
    """int64 node of each row: XXH64 of its key (a column's value), else of the whole
    row (XXH64 over the per-column value hashes of ``_value_hashes``, in column order)."""
    if key_field is not None:
        vals = table.column(key_field).to_pylist()
        keys = [b"\x00" if v is None else str(v).encode("utf-8") for v in vals]
    else:
        skip = {ROW, NODE}
        names = [n for n in table.column_names if n not in skip and not n.startswith("_m2l")]
        if not names:
            return np.full(table.num_rows, xxhash.xxh64_intdigest(b""), np.uint64).view(np.int64)
        lanes = [_value_hashes(table.column(n), _ROW_SEED + i) for i, n in enumerate(names)]
        return xxh64_lanes(lanes, seed=_ROW_SEED).view(np.int64)
    return np.fromiter((xxhash.xxh64_intdigest(k) for k in keys), dtype=np.uint64,
                       count=len(keys)).view(np.int64)


def _texts(table: pa.Table, spec: TextSpec) -> list[str]:
    col = table.column(spec.column)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return [v or "" for v in col.to_pylist()]
    return [field_text(v, spec.field) for v in col.to_pylist()]


def _char_mode(table: pa.Table, spec: TextSpec) -> np.ndarray | str | None:
    if spec.segmentation == "space":
        return None
    if spec.segmentation == "char":
        return np.ones(table.num_rows, dtype=bool)
    if spec.segmentation == "auto" or spec.language_field is None:
        return "auto"
    codes = table.column(spec.language_field).to_pylist()
    known = [(c or "").lower() in spec.known_languages for c in codes]
    if not all(known):  # a code the registry lacks: decide those rows by script
        return "auto"
    return np.array([(c or "").lower() in spec.char_languages for c in codes], dtype=bool)


#: Rows hashed together: small enough that the code-point arrays of one chunk stay
#: in cache (2000-row chunks cost twice as much per document as 500-row ones).
SIGNATURE_CHUNK = 512


def signature_batch(batch: Any, spec: TextSpec) -> pa.Table:
    """Per row: row id, node and band keys (the row's own columns are kept)."""
    t = as_table(batch)
    if t.num_rows <= SIGNATURE_CHUNK:
        return _signature_chunk(t, spec)
    return pa.concat_tables([_signature_chunk(t.slice(i, SIGNATURE_CHUNK), spec)
                             for i in range(0, t.num_rows, SIGNATURE_CHUNK)])


def _row_ids(node: np.ndarray) -> np.ndarray:
    """Ids that tell apart rows with the same node (identical keys) within one run.

    XXH64 of (the batch's node sequence, position): the same for the same block if
    Ray ever recomputes it, so the representative of identical rows stays one row.
    """
    if len(node) == 0:
        return np.empty(0, np.int64)
    fp = xxhash.xxh64_intdigest(np.ascontiguousarray(node).tobytes())
    n = len(node)
    return xxh64_lanes([node.view(np.uint64), np.arange(n, dtype=np.uint64),
                        np.full(n, fp, dtype=np.uint64)]).view(np.int64)


@dataclass
class SignatureArrays:
    """What the signature pass computes per row, as plain arrays (both paths use it)."""

    node: np.ndarray  # int64: XXH64 of the row's key
    band_keys: np.ndarray  # (rows, bands) int64; meaningless where n_shingles == 0
    n_shingles: np.ndarray  # int32
    eligible: np.ndarray  # bool: False rows take no part (their text counts as empty)
    #: (hashes, offsets) of every row's shingles when asked for: exact verification's
    #: payload (``verify_payload``), kept by the single-node path instead of recomputed
    shingles: tuple[np.ndarray, np.ndarray] | None = None


def _eligible_texts(t: pa.Table, spec: TextSpec) -> tuple[list[str], np.ndarray]:
    """The texts to shingle, with those of ineligible rows blanked, and the mask."""
    texts = _texts(t, spec)
    ok = np.ones(t.num_rows, dtype=bool)
    if spec.eligible_field is not None:
        ok = to_numpy(t.column(spec.eligible_field).fill_null(False), bool)
        texts = [x if e else "" for x, e in zip(texts, ok, strict=True)]
    return texts, ok


def signature_arrays(t: pa.Table, spec: TextSpec, keep_shingles: bool = False
                     ) -> SignatureArrays:
    """Node, band keys and shingle count of every row of ``t`` (one chunk)."""
    node = row_keys(t, spec.key_field)
    texts, ok = _eligible_texts(t, spec)
    h, off = shingles.shingle_hashes(texts, _char_mode(t, spec), ngram=spec.ngram,
                                     char_ngram=spec.char_ngram)
    a, b = minhash.permutations(spec.num_perm, spec.seed)
    sig = minhash.signatures(h, off, a, b)
    bk = minhash.band_keys(sig, spec.bands, spec.rows)
    return SignatureArrays(node, bk, np.diff(off).astype(np.int32), ok,
                           (h, off) if keep_shingles else None)


def _signature_chunk(t: pa.Table, spec: TextSpec) -> pa.Table:
    t = t.drop_columns([c for c in HELPERS if c in t.column_names])
    s = signature_arrays(t, spec)
    has = s.n_shingles > 0
    bk_len = np.where(has, spec.bands, 0)
    bk_off = np.concatenate([[0], np.cumsum(bk_len)])
    cols = {
        ROW: pa.array(_row_ids(s.node)),
        NODE: pa.array(s.node),
        "_bk": list_column(s.band_keys[has].ravel(), bk_off, pa.int64()),
        "_nsh": pa.array(s.n_shingles),
        "_el": pa.array(s.eligible),
    }
    for name, col in cols.items():
        t = t.append_column(name, col)
    return t


def verify_payload(t: pa.Table, spec: TextSpec) -> pa.Array:
    """What verification compares, recomputed from the text of just these rows.

    Candidates are a small share of all rows, so recomputing their shingles (or
    signatures) costs less than storing a payload for every row.
    """
    texts, _ = _eligible_texts(t, spec)
    h, off = shingles.shingle_hashes(texts, _char_mode(t, spec), ngram=spec.ngram,
                                     char_ngram=spec.char_ngram)
    if spec.payload == "signature":
        a, b = minhash.permutations(spec.num_perm, spec.seed)
        sig = minhash.signatures(h, off, a, b)
        lens = np.where(np.diff(off) > 0, spec.num_perm, 0)
        has = lens > 0
        return list_column(sig[has].ravel(), np.concatenate([[0], np.cumsum(lens)]),
                           pa.uint32())
    return list_column(h, off, pa.uint32())


def explode_bands(batch: Any) -> pa.Table:
    t = as_table(batch)
    vals, off = list_arrays(t.column("_bk"))
    node = to_numpy(t.column(NODE), np.int64)
    return pa.table({"_bkey": vals.astype(np.int64),
                     NODE: np.repeat(node, np.diff(off))})
