"""Stage 5 of dedup: every row's cluster (the kept member's node) and duplicate flag.

The node -> root map is broadcast when it is small (it holds only rows that have a
duplicate), else joined by a hash repartition. Rows with the same node (identical key)
are one vertex: the one with the smallest row id represents them, the others are its
duplicates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from m2l_ray.curation.dedup.arrays import as_table, bool_array, fetch, lookup, to_numpy
from m2l_ray.curation.dedup.signatures import HELPERS, NODE, ROW

CLUSTER = "dedup_cluster"
DUPLICATE = "dedup_duplicate"


def assign_broadcast(batch: Any, nodes: np.ndarray, roots: np.ndarray, dup_nodes: np.ndarray,
                     dup_reps: np.ndarray, eligible_field: str | None) -> pa.Table:
    t = as_table(batch)
    nodes, roots = fetch(nodes), fetch(roots)
    dup_nodes, dup_reps = fetch(dup_nodes), fetch(dup_reps)
    root, dup = assign_arrays(to_numpy(t.column(NODE), np.int64), to_numpy(t.column(ROW), np.int64),
                              nodes, roots, dup_nodes, dup_reps)
    return annotate_table(t, root, dup, eligible_field)


def assign_arrays(node: np.ndarray, row: np.ndarray, nodes: np.ndarray, roots: np.ndarray,
                  dup_nodes: np.ndarray, dup_reps: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(root node, duplicate flag) of rows, from the sorted node -> root map and the
    identical-key groups (the row with the representative row id survives)."""
    root = node.copy()
    hit, pos = lookup(nodes, node)
    root[hit] = roots[pos[hit]]
    dup = root != node
    if len(dup_nodes):
        hit, pos = lookup(dup_nodes, node)
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


def annotate_table(t: pa.Table, root: np.ndarray, dup: np.ndarray, eligible_field: str | None
            ) -> pa.Table:
    cluster = cluster_ids(root)
    dupa = bool_array(dup)
    if eligible_field is not None:
        ok = to_numpy(t.column(eligible_field).fill_null(False), bool)
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
    tag = to_numpy(t.column("_m2l_tag"), np.int8)
    a_rows = np.flatnonzero(tag == 0)
    d_rows = np.flatnonzero(tag == 1)
    nodes = to_numpy(t.column(NODE), np.int64)[a_rows]
    roots = to_numpy(t.column("_m2l_root"), np.int64)[a_rows]
    order = np.argsort(nodes)
    data = t.take(pa.array(d_rows)).drop_columns(["_m2l_tag", "_m2l_root"])
    return assign_broadcast(data, nodes[order], roots[order], dup_nodes, dup_reps,
                            eligible_field)


def assign_join(indexed: Any, stars: Any, nparts: int, dup_nodes: np.ndarray,
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
        leaf = to_numpy(t.column("a"), np.int64)
        root = to_numpy(t.column("b"), np.int64)
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


def cluster_stats(nodes: np.ndarray, roots: np.ndarray, dup_nodes: np.ndarray,
                  dup_counts: np.ndarray) -> dict[str, Any]:
    """Duplicates and clusters from the node -> root map and the identical-key groups."""
    return {
        "duplicates": _count_duplicates(nodes, roots, dup_nodes, dup_counts),
        # clusters with more than one row: components, plus identical-key groups
        # that are in no component
        "clusters": int(len(np.unique(roots))) + int((~lookup(nodes, dup_nodes)[0]).sum()),
        "nodes_in_clusters": int(len(nodes)),
    }


def _count_duplicates(nodes: np.ndarray, roots: np.ndarray, dup_nodes: np.ndarray,
                      dup_counts: np.ndarray) -> int:
    """Rows the assignment marks as duplicates, from the driver-side maps alone:
    every row of a non-root node, and all but one row of every other shared node."""
    rows_of = np.ones(len(nodes), dtype=np.int64)
    hit, pos = lookup(dup_nodes, nodes)
    rows_of[hit] = dup_counts[pos[hit]]
    non_root = nodes != roots
    dups = int(rows_of[non_root].sum())
    hit, pos = lookup(nodes[non_root] if non_root.any() else nodes[:0], dup_nodes)
    return dups + int((dup_counts[~hit] - 1).sum())
