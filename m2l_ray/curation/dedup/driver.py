"""``dedup``: the stages of MinHash-LSH near-duplicate detection run as one Ray Data job.

Decides where each stage runs (the driver when its data is small, Ray otherwise) and
collects the stats (the same keys as the single-node path, dedup_local.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from m2l_ray.curation import minhash
from m2l_ray.curation.config import DedupConfig
from m2l_ray.curation.dedup.arrays import as_table, collect, to_numpy, unique_pairs
from m2l_ray.curation.dedup.assign import (
    CLUSTER,
    DUPLICATE,
    assign_broadcast,
    assign_join,
    cluster_stats,
    exact_groups,
)
from m2l_ray.curation.dedup.candidates import bucket_edges_batch, verify_distributed, verify_on_driver
from m2l_ray.curation.dedup.components import components_distributed, components_local
from m2l_ray.curation.dedup.signatures import (
    FROM_CONFIG,
    NODE,
    ROW,
    explode_bands,
    signature_batch,
    text_spec,
)

_BROADCAST_MAX = 5_000_000  # node -> root entries shipped to every task
_DRIVER_MAX_ROWS = 20_000_000  # above this, identical keys are found by a Ray groupby


@dataclass
class DedupResult:
    """Input rows plus ``dedup_cluster`` / ``dedup_duplicate``, and what happened."""

    ds: Any  # ray.data.Dataset
    stats: dict[str, Any] = field(default_factory=dict)


def _num_partitions(cfg: DedupConfig, n_rows: int) -> int:
    if cfg.num_partitions:
        return cfg.num_partitions
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 2))
    return max(2, min(4 * cpus, math.ceil(n_rows / 20_000) + 1))


def _only_eligible(batch: Any) -> pa.Table:
    t = as_table(batch)
    return t.filter(t.column("_el")).select([NODE, ROW])


def _several(batch: Any) -> pa.Table:
    t = as_table(batch)
    return t.filter(pc.greater(t.column("n"), 1))


def _exact_groups(sig: Any, n_rows: int, cfg: DedupConfig
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes shared by several rows: (sorted nodes, representative = smallest row id,
    number of rows)."""
    from ray.data.aggregate import Count, Min

    sig = sig.select_columns([NODE, ROW, "_el"]).map_batches(_only_eligible,
                                                            batch_format="pyarrow")
    if n_rows <= _DRIVER_MAX_ROWS and cfg.driver_max_edges > 0:
        t = collect(sig, [NODE, ROW])
        return exact_groups(to_numpy(t.column(NODE), np.int64), to_numpy(t.column(ROW), np.int64))
    agg = (sig.select_columns([NODE, ROW]).groupby(NODE)
           .aggregate(Count(alias_name="n"), Min(ROW, alias_name="rep"))
           .map_batches(_several, batch_format="pyarrow").materialize())
    t = collect(agg, [NODE, "rep", "n"])
    node = to_numpy(t.column(NODE), np.int64)
    order = np.argsort(node)
    return (node[order], to_numpy(t.column("rep"), np.int64)[order],
            to_numpy(t.column("n"), np.int64)[order])


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

    clock = Clock()
    spec, params = text_spec(cfg, column=column, registry=registry,
                             language_field=language_field, eligible_field=eligible_field,
                             key_field=key_field)
    # one pass: every row keeps its data and gains node, row id, band keys, payload
    if split_blocks:
        ds = ds.repartition(target_num_rows_per_block=cfg.block_rows)
    sig = ds.map_batches(signature_batch, batch_format="pyarrow",
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
             .map_batches(explode_bands, batch_format="pyarrow")
             .repartition(nparts, keys=["_bkey"])
             .map_batches(bucket_edges_batch, batch_size=None, batch_format="pyarrow")
             .materialize())
    n_edges = edges.count()
    stats["candidate_edges"] = n_edges
    clock.lap("buckets")

    nodes = roots = np.empty(0, np.int64)
    assignment = None  # distributed node -> root dataset when too big to broadcast
    if n_edges <= cfg.driver_max_edges:
        stats["components"] = "driver"
        t = collect(edges, ["a", "b"])
        a, b = unique_pairs(to_numpy(t.column("a"), np.int64), to_numpy(t.column("b"), np.int64))
        stats["candidate_edges"] = int(len(a))
        if cfg.verify != "none" and len(a):
            keep = verify_on_driver(a, b, sig, params.threshold, cfg.verify, spec)
            a, b = a[keep], b[keep]
        stats["verified_edges"] = int(len(a))
        clock.lap("verify")
        nodes, roots = components_local(a, b)
        clock.lap("components")
    else:
        stats["components"] = "distributed"
        if cfg.verify != "none":
            edges = verify_distributed(edges, sig, nparts, params.threshold, cfg.verify, spec)
        stats["verified_edges"] = edges.count()
        clock.lap("verify")
        stars, rounds = components_distributed(edges, nparts)
        stats["cc_rounds"] = rounds
        n_star = stars.count()
        if n_star <= _BROADCAST_MAX:
            t = collect(stars, ["a", "b"])
            leaf, root = to_numpy(t.column("a"), np.int64), to_numpy(t.column("b"), np.int64)
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
            assign_broadcast, batch_format="pyarrow",
            fn_kwargs={"nodes": ray.put(nodes), "roots": ray.put(roots),
                       "dup_nodes": ray.put(dup_nodes), "dup_reps": ray.put(dup_reps),
                       "eligible_field": eligible_field})
    else:
        out = assign_join(sig, assignment, nparts, dup_nodes, dup_reps, eligible_field)
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


def _no_rows(batch: Any) -> pa.Table:
    t = as_table(batch)
    return (t.append_column(CLUSTER, pa.nulls(t.num_rows, pa.string()))
            .append_column(DUPLICATE, pa.array(np.zeros(t.num_rows, bool))))


def _count_true(batch: Any) -> pa.Table:
    t = as_table(batch)
    return pa.table({"n": [int(pc.sum(t.column(DUPLICATE).cast(pa.int64())).as_py() or 0)]})


class Clock:
    """Wall seconds per stage, for the stats (and the benchmark's breakdown)."""

    def __init__(self) -> None:
        self.t = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(self.laps.get(name, 0.0) + now - self.t, 3)
        self.t = now
