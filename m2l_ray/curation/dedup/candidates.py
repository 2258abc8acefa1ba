"""Stages 2-3 of dedup: candidate pairs from shared LSH buckets, and their verification.

Buckets become star edges from their smallest node to the others (one sort per block;
almost every bucket holds one row). Verification drops the candidate edges whose exact
Jaccard of shingle sets (or signature estimate) is below the threshold, on the driver
for the nodes on candidate edges only, or by two co-partitioned joins on Ray.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from m2l_ray.curation import kernel, minhash
from m2l_ray.curation.dedup.arrays import (
    as_table,
    fetch,
    gather_lists,
    list_arrays,
    list_column,
    lookup,
    to_numpy,
    unique_pairs,
)
from m2l_ray.curation.dedup.signatures import NODE, TextSpec, verify_payload


def bucket_edges_batch(batch: Any) -> pa.Table:
    """Star edges (smallest node, other node) of every bucket in this block.

    The block holds whole buckets (hash repartition by band key), so grouping is a
    sort. Edges come out deduplicated within the block.
    """
    t = as_table(batch)
    k = to_numpy(t.column("_bkey"), np.int64)
    v = to_numpy(t.column(NODE), np.int64)
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
    return unique_pairs(mins[gid[member]], v[member])


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


def verify_local(a: np.ndarray, b: np.ndarray, nodes: np.ndarray, vals: np.ndarray,
                 offs: np.ndarray, threshold: float, mode: str) -> np.ndarray:
    """Mask of edges whose similarity reaches the threshold (payloads by sorted node)."""
    ia = np.searchsorted(nodes, a)
    ib = np.searchsorted(nodes, b)
    if mode == "exact" and kernel.available():  # same values, no per-pair gathering
        return kernel.pair_jaccard(vals, offs, ia, ib) >= threshold - 1e-12
    keep = np.zeros(len(a), dtype=bool)
    step = 100_000  # bounds the memory of the sort inside pair_jaccard
    for s in range(0, len(a), step):
        va, oa = gather_lists(vals, offs, ia[s : s + step])
        vb, ob = gather_lists(vals, offs, ib[s : s + step])
        keep[s : s + step] = _payload_pairs(va, oa, vb, ob, mode) >= threshold - 1e-12
    return keep


def _attach_payload(batch: Any, side: str, threshold: float, mode: str) -> pa.Table:
    """Co-partitioned join, one side at a time: edges (tag 1) keyed by ``side`` get
    that endpoint's payload from the payload rows (tag 0) in the same block."""
    t = as_table(batch)
    tag = to_numpy(t.column("t"), np.int8)
    k = to_numpy(t.column("k"), np.int64)
    pvals, poffs = list_arrays(t.column("pl"))
    prow = np.flatnonzero(tag == 0)
    order = prow[np.argsort(k[prow], kind="stable")]
    pk = k[order]
    first = np.ones(len(pk), dtype=bool)
    first[1:] = pk[1:] != pk[:-1]
    nodes, src = pk[first], order[first]
    erow = np.flatnonzero(tag == 1)
    if side == "a":  # every copy of an edge is in this block: drop the copies
        ea, eb = k[erow], to_numpy(t.column("b"), np.int64)[erow]
        order = np.lexsort((eb, ea))
        keep = np.ones(len(order), dtype=bool)
        keep[1:] = (ea[order][1:] != ea[order][:-1]) | (eb[order][1:] != eb[order][:-1])
        erow = erow[order][keep]
    found, pos = lookup(nodes, k[erow])
    erow, pos = erow[found], pos[found]
    a = to_numpy(t.column("a"), np.int64)[erow]
    b = to_numpy(t.column("b"), np.int64)[erow]
    mine_v, mine_o = gather_lists(pvals, poffs, src[pos])
    if side == "a":
        return pa.table({"a": a, "b": b, "pa": list_column(mine_v, mine_o, pa.uint32())})
    other_v, other_o = list_arrays(t.column("pa"))
    other_v, other_o = gather_lists(other_v, other_o, erow)
    sim = _payload_pairs(other_v, other_o, mine_v, mine_o, mode)
    ok = sim >= threshold - 1e-12
    return pa.table({"a": a[ok], "b": b[ok]})


def verify_distributed(edges: Any, sig: Any, nparts: int, threshold: float, mode: str,
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
                         "t": pa.array(np.zeros(n, np.int8)), "pl": verify_payload(t, spec),
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


def verify_on_driver(a: np.ndarray, b: np.ndarray, sig: Any, threshold: float, mode: str,
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
    node = to_numpy(t.column(NODE), np.int64)
    vals, offs = list_arrays(t.column("_pl"))
    order = np.argsort(node, kind="stable")
    node = node[order]
    first = np.ones(len(node), dtype=bool)
    first[1:] = node[1:] != node[:-1]
    vals, offs = gather_lists(vals, offs, order[first])
    return verify_local(a, b, node[first], vals, offs, threshold, mode)


def _select_nodes(batch: Any, want: np.ndarray, spec: TextSpec) -> pa.Table:
    t = as_table(batch)
    hit, _ = lookup(fetch(want), to_numpy(t.column(NODE), np.int64))
    t = t.filter(pa.array(hit))
    return pa.table({NODE: t.column(NODE), "_pl": verify_payload(t, spec)})
