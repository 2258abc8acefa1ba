"""MinHash-LSH near-duplicate detection on Ray Data.

Stages (each a Ray Data operation, so each scales out with the cluster):

1. **Signatures** (one ``map_batches`` pass, materialised): every row keeps its
   columns and gains ``_m2l_node``, XXH64 of its key (the ``key_field`` value, else
   the whole row), a row id and its band keys. The node
   decides which member of a cluster survives (the smallest), so the choice depends
   on content, not on how blocks were cut: two runs keep the same rows.
   Shingles, MinHash and band keys are computed for a whole batch at once
   (shingles.py, minhash.py).
2. **Buckets**: one row per (band key, node), hash-partitioned by band key with
   ``repartition(keys=...)``; every block then holds whole buckets (the guarantee
   ``GroupedData.map_groups`` relies on), and each bucket becomes star edges from
   its smallest node to the others, found with numpy over the whole block.
3. **Verification** (optional): candidate edges whose exact Jaccard of shingle sets
   (or signature estimate) is below the threshold are dropped before they can join
   clusters.
4. **Connected components**: on the driver with scipy when the edge list is small
   (``driver_max_edges``), else distributed by alternating large-star/small-star
   rounds (Kiveris et al., 2014), each a hash repartition by node plus numpy.
   Components become stars around their smallest node: the kept member.
5. **Assignment**: every row gets ``dedup_cluster`` (hex of the kept member's node)
   and ``dedup_duplicate``. The node -> root map is broadcast when it is small (it
   holds only rows that have a duplicate), else joined by a hash repartition.

Rows with the same node (identical key: identical rows, or a repeated id) are one
vertex; the one with the smallest row id represents them and the others are
duplicates of it.

Inputs that fit one machine run the same stages without Ray (dedup_local.py); the
pieces both paths share live here: ``signature_arrays``, ``bucket_edges``,
``exact_groups``, ``_verify_local``, ``components_local``, ``assign_arrays``,
``cluster_ids`` and the stats helpers.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from m2l_ray.curation import kernel, minhash, shingles
from m2l_ray.curation.config import DEDUP_FIELDS, DedupConfig
from m2l_ray.curation.textnorm import field_text
from m2l_ray.curation.xxh import xxh64_lanes

ROW = "_m2l_row"
NODE = "_m2l_node"
#: Columns the signature pass adds to every row; the final assignment removes them.
HELPERS = (ROW, NODE, "_bk", "_nsh", "_el")
CLUSTER = "dedup_cluster"
DUPLICATE = "dedup_duplicate"
FROM_CONFIG = "\x00from-config"  # key_field default: use DedupConfig.key_field
_BROADCAST_MAX = 5_000_000  # node -> root entries shipped to every task
_DRIVER_MAX_ROWS = 20_000_000  # above this, identical keys are found by a Ray groupby


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


@dataclass
class DedupResult:
    """Input rows plus ``dedup_cluster`` / ``dedup_duplicate``, and what happened."""

    ds: Any  # ray.data.Dataset
    stats: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------- helpers


def _num_partitions(cfg: DedupConfig, n_rows: int) -> int:
    if cfg.num_partitions:
        return cfg.num_partitions
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 2))
    return max(2, min(4 * cpus, math.ceil(n_rows / 20_000) + 1))


def _val(x: Any) -> Any:
    """Broadcast arrays travel as ObjectRefs (stored once); tasks fetch them here."""
    import ray

    return ray.get(x) if isinstance(x, ray.ObjectRef) else x


def as_table(batch: Any) -> pa.Table:
    """A Ray Data batch (pyarrow, pandas or dict of arrays) as a pyarrow Table."""
    if isinstance(batch, pa.Table):
        return batch
    import pandas as pd

    if isinstance(batch, pd.DataFrame):
        return pa.Table.from_pandas(batch, preserve_index=False)
    return pa.table(batch)


def _np(col: Any, dtype: Any) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=dtype)


def _list_arrays(col: Any) -> tuple[np.ndarray, np.ndarray]:
    """(flat values, offsets) of an Arrow list column."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    offsets = np.asarray(col.offsets.to_numpy(), dtype=np.int64)
    values = col.values.to_numpy(zero_copy_only=False)
    base = offsets[0]
    return values[base : offsets[-1]] if base else values[: offsets[-1]], offsets - base


def _list_column(values: np.ndarray, offsets: np.ndarray, typ: pa.DataType) -> pa.Array:
    if len(offsets) and offsets[-1] >= 2**31 - 1:  # more values than int32 offsets can hold
        return pa.LargeListArray.from_arrays(pa.array(offsets.astype(np.int64)),
                                             pa.array(values, typ))
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, typ))


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


# ------------------------------------------------------------------ stage 1-2


#: Rows hashed together: small enough that the code-point arrays of one chunk stay
#: in cache (2000-row chunks cost twice as much per document as 500-row ones).
SIGNATURE_CHUNK = 512


def _signature_batch(batch: Any, spec: TextSpec) -> pa.Table:
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
    #: payload (``_payload``), kept by the single-node path instead of recomputed
    shingles: tuple[np.ndarray, np.ndarray] | None = None


def _eligible_texts(t: pa.Table, spec: TextSpec) -> tuple[list[str], np.ndarray]:
    """The texts to shingle, with those of ineligible rows blanked, and the mask."""
    texts = _texts(t, spec)
    ok = np.ones(t.num_rows, dtype=bool)
    if spec.eligible_field is not None:
        ok = _np(t.column(spec.eligible_field).fill_null(False), bool)
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
        "_bk": _list_column(s.band_keys[has].ravel(), bk_off, pa.int64()),
        "_nsh": pa.array(s.n_shingles),
        "_el": pa.array(s.eligible),
    }
    for name, col in cols.items():
        t = t.append_column(name, col)
    return t


def _payload(t: pa.Table, spec: TextSpec) -> pa.Array:
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
        return _list_column(sig[has].ravel(), np.concatenate([[0], np.cumsum(lens)]),
                            pa.uint32())
    return _list_column(h, off, pa.uint32())


def _explode_bands(batch: Any) -> pa.Table:
    t = as_table(batch)
    vals, off = _list_arrays(t.column("_bk"))
    node = _np(t.column(NODE), np.int64)
    return pa.table({"_bkey": vals.astype(np.int64),
                     NODE: np.repeat(node, np.diff(off))})


# ------------------------------------------------------------------ stage 3


def _bucket_edges(batch: Any) -> pa.Table:
    """Star edges (smallest node, other node) of every bucket in this block.

    The block holds whole buckets (hash repartition by band key), so grouping is a
    sort. Edges come out deduplicated within the block.
    """
    t = as_table(batch)
    k = _np(t.column("_bkey"), np.int64)
    v = _np(t.column(NODE), np.int64)
    a, b = bucket_edges(k, v)
    return pa.table({"a": a, "b": b})


def bucket_edges(k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Star edges (smallest node, other node) of every bucket with several nodes.

    Almost every bucket holds one row, so one sort by key first finds the few keys
    that repeat, and only their rows go through the (key, node) lexsort.
    """
    if len(k) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    order = np.argsort(k)
    ks = k[order]
    same = ks[1:] == ks[:-1]
    multi = np.zeros(len(k), dtype=bool)
    multi[1:] |= same
    multi[:-1] |= same
    sel = order[multi]
    return _star_edges(k[sel], v[sel])


def _star_edges(k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(k) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    order = np.lexsort((v, k))
    k, v = k[order], v[order]
    keep = np.ones(len(k), dtype=bool)
    keep[1:] = (k[1:] != k[:-1]) | (v[1:] != v[:-1])
    k, v = k[keep], v[keep]
    start = np.ones(len(k), dtype=bool)
    start[1:] = k[1:] != k[:-1]
    gid = np.cumsum(start) - 1
    mins = v[start]
    member = ~start
    return _unique_pairs(mins[gid[member]], v[member])


def _unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(a) == 0:
        return a.astype(np.int64), b.astype(np.int64)
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    keep = np.ones(len(a), dtype=bool)
    keep[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return a[keep], b[keep]


# ------------------------------------------------------------------ stage 4


def _payload_pairs(
    va: np.ndarray, oa: np.ndarray, vb: np.ndarray, ob: np.ndarray, mode: str
) -> np.ndarray:
    """Similarity of pairs given their payload lists (shingle sets or signatures)."""
    if mode == "exact":
        return minhash.pair_jaccard(va, oa, vb, ob)
    la, lb = np.diff(oa), np.diff(ob)
    out = np.zeros(len(la))
    ok = (la > 0) & (la == lb)
    if ok.any():
        p = int(la[ok][0])
        sa = va[(oa[:-1][ok][:, None] + np.arange(p)).ravel()].reshape(-1, p)
        sb = vb[(ob[:-1][ok][:, None] + np.arange(p)).ravel()].reshape(-1, p)
        out[ok] = (sa == sb).mean(axis=1)
    return out


def _gather_lists(values: np.ndarray, offsets: np.ndarray, idx: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Sub-lists ``idx`` of a flat (values, offsets) list column, as a new one."""
    lens = np.diff(offsets)[idx]
    new_off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    if new_off[-1] == 0:
        return values[:0], new_off
    starts = offsets[:-1][idx]
    flat = np.repeat(starts - new_off[:-1], lens) + np.arange(new_off[-1])
    return values[flat], new_off


def _verify_local(a: np.ndarray, b: np.ndarray, nodes: np.ndarray, vals: np.ndarray,
                  offs: np.ndarray, threshold: float, mode: str) -> np.ndarray:
    """Mask of edges whose similarity reaches the threshold (payloads by sorted node)."""
    ia = np.searchsorted(nodes, a)
    ib = np.searchsorted(nodes, b)
    if mode == "exact" and kernel.available():  # same values, no per-pair gathering
        return kernel.pair_jaccard(vals, offs, ia, ib) >= threshold - 1e-12
    keep = np.zeros(len(a), dtype=bool)
    step = 100_000  # bounds the memory of the sort inside pair_jaccard
    for s in range(0, len(a), step):
        va, oa = _gather_lists(vals, offs, ia[s : s + step])
        vb, ob = _gather_lists(vals, offs, ib[s : s + step])
        keep[s : s + step] = _payload_pairs(va, oa, vb, ob, mode) >= threshold - 1e-12
    return keep


def _lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(found mask, position) of ``keys`` in ``sorted_keys``."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=bool), np.zeros(len(keys), dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys, pos


def _attach_payload(batch: Any, side: str, threshold: float, mode: str) -> pa.Table:
    """Co-partitioned join, one side at a time: edges (tag 1) keyed by ``side`` get
    that endpoint's payload from the payload rows (tag 0) in the same block."""
    t = as_table(batch)
    tag = _np(t.column("t"), np.int8)
    k = _np(t.column("k"), np.int64)
    pvals, poffs = _list_arrays(t.column("pl"))
    prow = np.flatnonzero(tag == 0)
    order = prow[np.argsort(k[prow], kind="stable")]
    pk = k[order]
    first = np.ones(len(pk), dtype=bool)
    first[1:] = pk[1:] != pk[:-1]
    nodes, src = pk[first], order[first]
    erow = np.flatnonzero(tag == 1)
    if side == "a":  # every copy of an edge is in this block: drop the copies
        ea, eb = k[erow], _np(t.column("b"), np.int64)[erow]
        order = np.lexsort((eb, ea))
        keep = np.ones(len(order), dtype=bool)
        keep[1:] = (ea[order][1:] != ea[order][:-1]) | (eb[order][1:] != eb[order][:-1])
        erow = erow[order][keep]
    found, pos = _lookup(nodes, k[erow])
    erow, pos = erow[found], pos[found]
    a = _np(t.column("a"), np.int64)[erow]
    b = _np(t.column("b"), np.int64)[erow]
    mine_v, mine_o = _gather_lists(pvals, poffs, src[pos])
    if side == "a":
        return pa.table({"a": a, "b": b, "pa": _list_column(mine_v, mine_o, pa.uint32())})
    other_v, other_o = _list_arrays(t.column("pa"))
    other_v, other_o = _gather_lists(other_v, other_o, erow)
    sim = _payload_pairs(other_v, other_o, mine_v, mine_o, mode)
    ok = sim >= threshold - 1e-12
    return pa.table({"a": a[ok], "b": b[ok]})


def _verify_distributed(edges: Any, sig: Any, nparts: int, threshold: float, mode: str,
                        spec: TextSpec) -> Any:
    """Exact (or signature) check of candidate edges by two co-partitioned joins."""
    lt = pa.list_(pa.uint32())

    def edge_rows(side: str):
        def fn(batch: Any) -> pa.Table:
            t = as_table(batch)
            n = t.num_rows
            pa_col = t.column("pa") if "pa" in t.column_names else pa.nulls(n, lt)
            return pa.table({"k": t.column(side), "a": t.column("a"), "b": t.column("b"),
                             "t": pa.array(np.ones(n, np.int8)), "pl": pa.nulls(n, lt),
                             "pa": pa_col})
        return fn

    def payload_rows(batch: Any) -> pa.Table:
        t = as_table(batch)
        t = t.filter(pc.greater(t.column("_nsh"), 0))  # rows without shingles have no edge
        n = t.num_rows
        zero = pa.array(np.zeros(n, np.int64))
        return pa.table({"k": t.column(NODE), "a": zero, "b": zero,
                         "t": pa.array(np.zeros(n, np.int8)), "pl": _payload(t, spec),
                         "pa": pa.nulls(n, lt)})

    payload = sig.map_batches(payload_rows, batch_format="pyarrow")
    step1 = (edges.map_batches(edge_rows("a"), batch_format="pyarrow").union(payload)
             .repartition(nparts, keys=["k"])
             .map_batches(_attach_payload, batch_size=None, batch_format="pyarrow",
                          fn_kwargs={"side": "a", "threshold": threshold, "mode": mode}))
    step2 = (step1.map_batches(edge_rows("b"), batch_format="pyarrow").union(payload)
             .repartition(nparts, keys=["k"])
             .map_batches(_attach_payload, batch_size=None, batch_format="pyarrow",
                          fn_kwargs={"side": "b", "threshold": threshold, "mode": mode}))
    return step2.materialize()


# ------------------------------------------------------------------ stage 5


def components_local(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, root) for every node on an edge; root = smallest node of its component."""
    if len(a) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    nodes = np.unique(np.concatenate([a, b]))
    ia, ib = np.searchsorted(nodes, a), np.searchsorted(nodes, b)
    if kernel.available():
        return nodes, nodes[kernel.min_roots(ia, ib, len(nodes))]
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    g = coo_matrix((np.ones(len(a), np.int8), (ia, ib)), shape=(len(nodes), len(nodes)))
    _, label = connected_components(g, directed=False)
    # nodes are sorted, so the first node seen for each label is its minimum
    first = np.full(label.max() + 1, -1, dtype=np.int64)
    order = np.arange(len(nodes))[::-1]
    first[label[order]] = order  # last write wins: the smallest index
    return nodes, nodes[first[label]]


def _large_star(batch: Any) -> pa.Table:
    """Per node u: link every larger neighbour to m(u) = min(u, neighbours)."""
    t = as_table(batch)
    u = _np(t.column("u"), np.int64)
    v = _np(t.column("v"), np.int64)
    u, v = _unique_pairs(u, v)  # sorted by (u, v)
    if len(u) == 0:
        return pa.table({"a": u, "b": v, "changed": np.zeros(0, np.int8)})
    start = np.ones(len(u), dtype=bool)
    start[1:] = u[1:] != u[:-1]
    gid = np.cumsum(start) - 1
    m = np.minimum(u[start], v[start])[gid]  # v sorted within u: first v is the min
    sel = v > u
    changed = (m[sel] != u[sel]).astype(np.int8)
    return pa.table({"a": v[sel], "b": m[sel], "changed": changed})


def _small_star(batch: Any) -> pa.Table:
    """Per node u and its smaller neighbours N: link N and u to m = min(N)."""
    t = as_table(batch)
    u = _np(t.column("u"), np.int64)
    v = _np(t.column("v"), np.int64)
    # changes made by the large-star step travel in the same column, so that one
    # sum over this step's output tells whether the whole round changed anything
    carried = int(pc.sum(t.column("changed")).as_py() or 0) if "changed" in t.column_names \
        else 0
    u, v = _unique_pairs(u, v)  # v < u for every row; sorted by (u, v)
    if len(u) == 0:
        return pa.table({"a": u, "b": v, "changed": np.zeros(0, np.int64)})
    start = np.ones(len(u), dtype=bool)
    start[1:] = u[1:] != u[:-1]
    gid = np.cumsum(start) - 1
    m = v[start][gid]
    others = ~start  # every smaller neighbour but the smallest moves to m
    a = np.concatenate([v[others], u[start]])
    b = np.concatenate([m[others], v[start]])
    changed = np.concatenate([np.ones(int(others.sum()), np.int64),
                              np.zeros(int(start.sum()), np.int64)])
    changed[0] += carried
    return pa.table({"a": a, "b": b, "changed": changed})


def _both_directions(batch: Any) -> pa.Table:
    t = as_table(batch)
    a = _np(t.column("a"), np.int64)
    b = _np(t.column("b"), np.int64)
    return pa.table({"u": np.concatenate([a, b]), "v": np.concatenate([b, a])})


def _max_min(batch: Any) -> pa.Table:
    t = as_table(batch)
    a = _np(t.column("a"), np.int64)
    b = _np(t.column("b"), np.int64)
    out = {"u": np.maximum(a, b), "v": np.minimum(a, b)}
    if "changed" in t.column_names:
        out["changed"] = _np(t.column("changed"), np.int64)
    return pa.table(out)


def _block_sum(batch: Any) -> pa.Table:
    t = as_table(batch)
    return pa.table({"n": [int(pc.sum(t.column("changed")).as_py() or 0)],
                     "rows": [t.num_rows]})


def components_distributed(edges: Any, nparts: int, max_rounds: int = 100) -> tuple[Any, int]:
    """Connected components on Ray: alternate large-star and small-star until stable.

    Returns (dataset of star edges (a = node, b = its component's smallest node),
    rounds). Each round is two hash repartitions by node plus numpy per block.
    """
    cur = edges.select_columns(["a", "b"])
    for rnd in range(1, max_rounds + 1):
        small = (cur.map_batches(_both_directions, batch_format="pyarrow")
                 .repartition(nparts, keys=["u"])
                 .map_batches(_large_star, batch_size=None, batch_format="pyarrow")
                 .map_batches(_max_min, batch_format="pyarrow")
                 .repartition(nparts, keys=["u"])
                 .map_batches(_small_star, batch_size=None, batch_format="pyarrow")
                 .materialize())
        sums = small.map_batches(_block_sum, batch_size=None, batch_format="pyarrow").take_all()
        changes = sum(r["n"] for r in sums)
        cur = small.select_columns(["a", "b"])
        if changes == 0:
            return cur, rnd
    raise RuntimeError(f"connected components did not converge in {max_rounds} rounds")


# ------------------------------------------------------------------ stage 6


def _assign_broadcast(batch: Any, nodes: np.ndarray, roots: np.ndarray, dup_nodes: np.ndarray,
                      dup_reps: np.ndarray, eligible_field: str | None) -> pa.Table:
    t = as_table(batch)
    nodes, roots = _val(nodes), _val(roots)
    dup_nodes, dup_reps = _val(dup_nodes), _val(dup_reps)
    root, dup = assign_arrays(_np(t.column(NODE), np.int64), _np(t.column(ROW), np.int64),
                              nodes, roots, dup_nodes, dup_reps)
    return _finish(t, root, dup, eligible_field)


def assign_arrays(node: np.ndarray, row: np.ndarray, nodes: np.ndarray, roots: np.ndarray,
                  dup_nodes: np.ndarray, dup_reps: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(root node, duplicate flag) of rows, from the sorted node -> root map and the
    identical-key groups (the row with the representative row id survives)."""
    root = node.copy()
    hit, pos = _lookup(nodes, node)
    root[hit] = roots[pos[hit]]
    dup = root != node
    if len(dup_nodes):
        hit, pos = _lookup(dup_nodes, node)
        dup |= hit & (dup_reps[pos] != row)
    return root, dup


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def cluster_ids(root: np.ndarray) -> pa.Array:
    """``dedup_cluster`` strings: 16 hex digits of each root node (two's complement).

    Built as one Arrow buffer (no Python string per row: a million rows would cost
    half a second otherwise).
    """
    n = len(root)
    byts = np.ascontiguousarray(root, dtype=np.int64).astype(">i8").view(np.uint8)
    digits = np.empty(2 * len(byts), dtype=np.uint8)
    digits[0::2] = _HEX[byts >> 4]
    digits[1::2] = _HEX[byts & 15]
    offsets = np.arange(0, 16 * n + 1, 16, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(digits))


def bool_array(x: np.ndarray) -> pa.Array:
    """An Arrow boolean array of a numpy one, from its packed bits: ``pa.array`` on a
    numpy array imports pandas (0.15 s, a tenth of deduplicating 100K rows)."""
    x = np.asarray(x, dtype=bool)
    return pa.Array.from_buffers(
        pa.bool_(), len(x), [None, pa.py_buffer(np.packbits(x, bitorder="little"))])


def _finish(t: pa.Table, root: np.ndarray, dup: np.ndarray, eligible_field: str | None
            ) -> pa.Table:
    cluster = cluster_ids(root)
    dupa = bool_array(dup)
    if eligible_field is not None:
        ok = _np(t.column(eligible_field).fill_null(False), bool)
        cluster = pc.if_else(bool_array(ok), cluster, pa.nulls(len(ok), pa.string()))
        dupa = bool_array(dup & ok)
    for name in (CLUSTER, DUPLICATE):
        if name in t.column_names:
            t = t.drop_columns([name])
    t = t.append_column(CLUSTER, cluster).append_column(DUPLICATE, dupa)
    return t.drop_columns([c for c in HELPERS if c in t.column_names])


def _assign_rows_distributed(batch: Any, dup_nodes: np.ndarray, dup_reps: np.ndarray,
                             eligible_field: str | None) -> pa.Table:
    """Co-partitioned join: data rows (tag 1) take the root of their node from the
    assignment rows (tag 0) in the same block."""
    t = as_table(batch)
    tag = _np(t.column("_m2l_tag"), np.int8)
    a_rows = np.flatnonzero(tag == 0)
    d_rows = np.flatnonzero(tag == 1)
    nodes = _np(t.column(NODE), np.int64)[a_rows]
    roots = _np(t.column("_m2l_root"), np.int64)[a_rows]
    order = np.argsort(nodes)
    data = t.take(pa.array(d_rows)).drop_columns(["_m2l_tag", "_m2l_root"])
    return _assign_broadcast(data, nodes[order], roots[order], dup_nodes, dup_reps,
                             eligible_field)


# ------------------------------------------------------------------ driver


def _collect(ds: Any, columns: list[str]) -> pa.Table:
    import ray

    schema = ds.schema()
    if schema is None or list(schema.names) != columns:
        ds = ds.select_columns(columns)
    parts = [t.select(columns) for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    if not parts:
        return pa.table({c: pa.array([], pa.int64()) for c in columns})
    return pa.concat_tables(parts)


def _only_eligible(batch: Any) -> pa.Table:
    t = as_table(batch)
    return t.filter(t.column("_el")).select([NODE, ROW])


def _several(batch: Any) -> pa.Table:
    t = as_table(batch)
    return t.filter(pc.greater(t.column("n"), 1))


def exact_groups(node: np.ndarray, row: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes of several (eligible) rows: (sorted nodes, smallest row id, row count)."""
    order = np.lexsort((row, node))
    node, row = node[order], row[order]
    start = np.ones(len(node), dtype=bool)
    start[1:] = node[1:] != node[:-1]
    counts = np.diff(np.concatenate([np.flatnonzero(start), [len(node)]]))
    multi = counts > 1
    return node[start][multi], row[start][multi], counts[multi]


def _exact_groups(sig: Any, n_rows: int, cfg: DedupConfig
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes shared by several rows: (sorted nodes, representative = smallest row id,
    number of rows)."""
    from ray.data.aggregate import Count, Min

    sig = sig.select_columns([NODE, ROW, "_el"]).map_batches(_only_eligible,
                                                            batch_format="pyarrow")
    if n_rows <= _DRIVER_MAX_ROWS and cfg.driver_max_edges > 0:
        t = _collect(sig, [NODE, ROW])
        return exact_groups(_np(t.column(NODE), np.int64), _np(t.column(ROW), np.int64))
    agg = (sig.select_columns([NODE, ROW]).groupby(NODE)
           .aggregate(Count(alias_name="n"), Min(ROW, alias_name="rep"))
           .map_batches(_several, batch_format="pyarrow").materialize())
    t = _collect(agg, [NODE, "rep", "n"])
    node = _np(t.column(NODE), np.int64)
    order = np.argsort(node)
    return (node[order], _np(t.column("rep"), np.int64)[order],
            _np(t.column("n"), np.int64)[order])


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


def dedup(
    ds: Any,
    cfg: DedupConfig,
    *,
    column: str | None = None,
    registry: Any = None,
    language_field: str | None = None,
    eligible_field: str | None = None,
    key_field: str | None = FROM_CONFIG,
    split_blocks: bool = True,
) -> DedupResult:
    """Annotate every row of ``ds`` with its near-duplicate cluster.

    ``column`` overrides the column named by ``cfg.field`` (``cfg.field`` then only
    says which turns of a conversation to use). ``eligible_field`` names a bool
    column: rows where it is False are not hashed (cluster null, never duplicates).
    ``key_field`` overrides ``cfg.key_field`` (None: hash the whole row).
    ``split_blocks`` cuts the input into blocks of ``cfg.block_rows`` rows first, so
    that one large file is hashed by every CPU rather than by one task.
    """
    import ray

    clock = _Clock()
    spec, params = text_spec(cfg, column=column, registry=registry,
                             language_field=language_field, eligible_field=eligible_field,
                             key_field=key_field)
    # one pass: every row keeps its data and gains node, row id, band keys, payload
    if split_blocks:
        ds = ds.repartition(target_num_rows_per_block=cfg.block_rows)
    sig = ds.map_batches(_signature_batch, batch_format="pyarrow",
                         fn_kwargs={"spec": spec}).materialize()
    n_rows = sig.count()
    clock.lap("read_and_signatures")
    stats = base_stats(cfg, params, n_rows)
    if n_rows == 0:
        return DedupResult(ds.map_batches(_no_rows, batch_format="pyarrow"),
                           {**stats, "clusters": 0, "duplicates": 0})
    nparts = _num_partitions(cfg, n_rows)
    stats["partitions"] = nparts
    dup_nodes, dup_reps, dup_counts = _exact_groups(sig, n_rows, cfg)
    stats["exact_duplicates"] = int((dup_counts - 1).sum())
    clock.lap("identical_keys")

    edges = (sig.select_columns(["_bk", NODE])
             .map_batches(_explode_bands, batch_format="pyarrow")
             .repartition(nparts, keys=["_bkey"])
             .map_batches(_bucket_edges, batch_size=None, batch_format="pyarrow")
             .materialize())
    n_edges = edges.count()
    stats["candidate_edges"] = n_edges
    clock.lap("buckets")

    nodes = roots = np.empty(0, np.int64)
    assignment = None  # distributed node -> root dataset when too big to broadcast
    if n_edges <= cfg.driver_max_edges:
        stats["components"] = "driver"
        t = _collect(edges, ["a", "b"])
        a, b = _unique_pairs(_np(t.column("a"), np.int64), _np(t.column("b"), np.int64))
        stats["candidate_edges"] = int(len(a))
        if cfg.verify != "none" and len(a):
            keep = _verify_on_driver(a, b, sig, params.threshold, cfg.verify, spec)
            a, b = a[keep], b[keep]
        stats["verified_edges"] = int(len(a))
        clock.lap("verify")
        nodes, roots = components_local(a, b)
        clock.lap("components")
    else:
        stats["components"] = "distributed"
        if cfg.verify != "none":
            edges = _verify_distributed(edges, sig, nparts, params.threshold, cfg.verify, spec)
        stats["verified_edges"] = edges.count()
        clock.lap("verify")
        stars, rounds = components_distributed(edges, nparts)
        stats["cc_rounds"] = rounds
        n_star = stars.count()
        if n_star <= _BROADCAST_MAX:
            t = _collect(stars, ["a", "b"])
            leaf, root = _np(t.column("a"), np.int64), _np(t.column("b"), np.int64)
            centre = np.unique(root)
            nodes = np.concatenate([leaf, centre])
            roots = np.concatenate([root, centre])
            order = np.argsort(nodes)
            nodes, roots = nodes[order], roots[order]
        else:
            assignment = stars
        clock.lap("components")

    if assignment is None:
        out = sig.map_batches(
            _assign_broadcast, batch_format="pyarrow",
            fn_kwargs={"nodes": ray.put(nodes), "roots": ray.put(roots),
                       "dup_nodes": ray.put(dup_nodes), "dup_reps": ray.put(dup_reps),
                       "eligible_field": eligible_field})
    else:
        out = _assign_join(sig, assignment, nparts, dup_nodes, dup_reps, eligible_field)
    if assignment is None:
        stats.update(cluster_stats(nodes, roots, dup_nodes, dup_counts))
    else:  # no driver-side map: count the output
        out = out.materialize()
        stats.update({"duplicates": int(sum(r["n"] for r in out.map_batches(
            _count_true, batch_size=None, batch_format="pyarrow").take_all())),
            "clusters": None, "nodes_in_clusters": None})
    clock.lap("assign")
    stats.update({"lsh": minhash.describe(params), "seconds": clock.laps})
    return DedupResult(out, stats)


def base_stats(cfg: DedupConfig, params: minhash.LshParams, n_rows: int) -> dict[str, Any]:
    """The settings part of the stats (the same keys on both paths)."""
    return {
        "rows": n_rows, "threshold": cfg.threshold, "num_perm": params.num_perm,
        "bands": params.bands, "rows_per_band": params.rows, "ngram": cfg.ngram,
        "char_ngram": cfg.char_ngram, "verify": cfg.verify, "field": cfg.field,
    }


def cluster_stats(nodes: np.ndarray, roots: np.ndarray, dup_nodes: np.ndarray,
                  dup_counts: np.ndarray) -> dict[str, Any]:
    """Duplicates and clusters from the node -> root map and the identical-key groups."""
    return {
        "duplicates": _count_duplicates(nodes, roots, dup_nodes, dup_counts),
        # clusters with more than one row: components, plus identical-key groups
        # that are in no component
        "clusters": int(len(np.unique(roots))) + int((~_lookup(nodes, dup_nodes)[0]).sum()),
        "nodes_in_clusters": int(len(nodes)),
    }


def _no_rows(batch: Any) -> pa.Table:
    t = as_table(batch)
    return (t.append_column(CLUSTER, pa.nulls(t.num_rows, pa.string()))
            .append_column(DUPLICATE, pa.array(np.zeros(t.num_rows, bool))))


class _Clock:
    """Wall seconds per stage, for the stats (and the benchmark's breakdown)."""

    def __init__(self) -> None:
        self.t = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(self.laps.get(name, 0.0) + now - self.t, 3)
        self.t = now


def _count_duplicates(nodes: np.ndarray, roots: np.ndarray, dup_nodes: np.ndarray,
                      dup_counts: np.ndarray) -> int:
    """Rows the assignment marks as duplicates, from the driver-side maps alone:
    every row of a non-root node, and all but one row of every other shared node."""
    rows_of = np.ones(len(nodes), dtype=np.int64)
    hit, pos = _lookup(dup_nodes, nodes)
    rows_of[hit] = dup_counts[pos[hit]]
    non_root = nodes != roots
    dups = int(rows_of[non_root].sum())
    hit, pos = _lookup(nodes[non_root] if non_root.any() else nodes[:0], dup_nodes)
    return dups + int((dup_counts[~hit] - 1).sum())


def _count_true(batch: Any) -> pa.Table:
    t = as_table(batch)
    return pa.table({"n": [int(pc.sum(t.column(DUPLICATE).cast(pa.int64())).as_py() or 0)]})


def _verify_on_driver(a: np.ndarray, b: np.ndarray, sig: Any, threshold: float, mode: str,
                      spec: TextSpec) -> np.ndarray:
    """Fetch payloads of the nodes on candidate edges only, then check every edge."""
    import ray

    want = np.unique(np.concatenate([a, b]))
    want_ref = ray.put(want)
    cols = [NODE, spec.column] + [c for c in (spec.language_field, spec.eligible_field)
                                  if c is not None and c != spec.column]
    sub = sig.select_columns(cols).map_batches(
        _select_nodes, batch_format="pyarrow", fn_kwargs={"want": want_ref, "spec": spec})
    parts = [p for p in ray.get(sub.to_arrow_refs()) if p.num_rows]
    t = pa.concat_tables(parts) if parts else pa.table(
        {NODE: pa.array([], pa.int64()), "_pl": pa.array([], pa.list_(pa.uint32()))})
    node = _np(t.column(NODE), np.int64)
    vals, offs = _list_arrays(t.column("_pl"))
    order = np.argsort(node, kind="stable")
    node = node[order]
    first = np.ones(len(node), dtype=bool)
    first[1:] = node[1:] != node[:-1]
    vals, offs = _gather_lists(vals, offs, order[first])
    return _verify_local(a, b, node[first], vals, offs, threshold, mode)


def _select_nodes(batch: Any, want: np.ndarray, spec: TextSpec) -> pa.Table:
    t = as_table(batch)
    hit, _ = _lookup(_val(want), _np(t.column(NODE), np.int64))
    t = t.filter(pa.array(hit))
    return pa.table({NODE: t.column(NODE), "_pl": _payload(t, spec)})


def _assign_join(indexed: Any, stars: Any, nparts: int, dup_nodes: np.ndarray,
                 dup_reps: np.ndarray, eligible_field: str | None) -> Any:
    """Node -> root for huge clusters: union data and assignment rows, repartition by node."""
    drop = [c for c in HELPERS if c not in (ROW, NODE)]
    schema = pa.schema([f for f in indexed.schema().base_schema if f.name not in drop])

    def data_rows(batch: Any) -> pa.Table:
        t = as_table(batch)
        t = t.drop_columns([c for c in drop if c in t.column_names])
        n = t.num_rows
        return (t.append_column("_m2l_tag", pa.array(np.ones(n, np.int8)))
                .append_column("_m2l_root", pa.array(np.zeros(n, np.int64))))

    def star_rows(batch: Any) -> pa.Table:
        t = as_table(batch)
        leaf = _np(t.column("a"), np.int64)
        root = _np(t.column("b"), np.int64)
        centre = np.unique(root)
        node = np.concatenate([leaf, centre])
        rt = np.concatenate([root, centre])
        n = len(node)
        cols = {}
        for f in schema:
            if f.name == NODE:
                cols[f.name] = pa.array(node, pa.int64())
            elif f.name == ROW:
                cols[f.name] = pa.array(np.full(n, -1, np.int64))
            else:
                cols[f.name] = pa.nulls(n, f.type)
        cols["_m2l_tag"] = pa.array(np.zeros(n, np.int8))
        cols["_m2l_root"] = pa.array(rt)
        return pa.table(cols)

    # centres appear once per block above; duplicates of (node, root) are harmless
    joined = (indexed.map_batches(data_rows, batch_format="pyarrow")
              .union(stars.map_batches(star_rows, batch_format="pyarrow"))
              .repartition(nparts, keys=[NODE])
              .map_batches(_assign_rows_distributed, batch_size=None, batch_format="pyarrow",
                           fn_kwargs={"dup_nodes": dup_nodes, "dup_reps": dup_reps,
                                      "eligible_field": eligible_field}))
    return joined
