"""Stage 4 of dedup: connected components of the verified edges, as stars around their smallest node.

On one machine with the compiled kernel (or scipy); on Ray by alternating large-star and
small-star rounds (Kiveris et al., 2014), each a hash repartition by node plus numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from m2l_ray.curation import kernel
from m2l_ray.curation.dedup.arrays import as_table, to_numpy, unique_pairs


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
    u = to_numpy(t.column("u"), np.int64)
    v = to_numpy(t.column("v"), np.int64)
    u, v = unique_pairs(u, v)  # sorted by (u, v)
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
    u = to_numpy(t.column("u"), np.int64)
    v = to_numpy(t.column("v"), np.int64)
    # changes made by the large-star step travel in the same column, so that one
    # sum over this step's output tells whether the whole round changed anything
    carried = int(pc.sum(t.column("changed")).as_py() or 0) if "changed" in t.column_names \
        else 0
    u, v = unique_pairs(u, v)  # v < u for every row; sorted by (u, v)
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
    a = to_numpy(t.column("a"), np.int64)
    b = to_numpy(t.column("b"), np.int64)
    return pa.table({"u": np.concatenate([a, b]), "v": np.concatenate([b, a])})


def _max_min(batch: Any) -> pa.Table:
    t = as_table(batch)
    a = to_numpy(t.column("a"), np.int64)
    b = to_numpy(t.column("b"), np.int64)
    out = {"u": np.maximum(a, b), "v": np.minimum(a, b)}
    if "changed" in t.column_names:
        out["changed"] = to_numpy(t.column("changed"), np.int64)
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
