"""Dedup with every stage on Ray: identical keys by groupby, verification by
co-partitioned joins, connected components by large-star/small-star rounds.

Forced with ``driver_max_edges=0`` (and the node -> root map joined, not broadcast)
on the planted corpus of test_curation_dedup.py;
the result must equal the exact-Jaccard truth and the driver-path result. This
file is slower than the others (about ten Ray shuffles on a 2-CPU machine).
"""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
from test_curation_dedup import _run, build_corpus, check_against_truth, truth_groups

from m2l_ray.curation import dedup
from m2l_ray.curation.dedup import driver


def test_distributed_path_matches_truth(curation_ray, monkeypatch):
    # also send the node -> root map through the co-partitioned join, not a broadcast
    monkeypatch.setattr(driver, "_BROADCAST_MAX", 0)
    rows = build_corpus()
    order = list(range(len(rows)))
    random.Random(2).shuffle(order)
    out, st = _run(rows, order, 4, num_partitions=2, driver_max_edges=0)
    assert st["components"] == "distributed" and st["cc_rounds"] >= 1
    check_against_truth(out, rows)
    assert st["exact_duplicates"] == 8
    assert st["duplicates"] == sum(len(g) - 1 for g in truth_groups(rows))


def test_distributed_components_on_a_long_chain(curation_ray):
    """A path graph needs several rounds; roots must be each component's minimum."""
    import ray

    rng = np.random.default_rng(4)
    nodes = rng.choice(10**12, 30, replace=False).astype(np.int64)
    a = np.concatenate([nodes[:19], nodes[20:29]])  # two paths: 0..19 and 20..29
    b = np.concatenate([nodes[1:20], nodes[21:30]])
    ds = ray.data.from_arrow(pa.table({"a": a, "b": b})).repartition(3)
    stars, rounds = dedup.components_distributed(ds, 2)
    t = pa.concat_tables(ray.get(stars.to_arrow_refs()))
    got = dict(zip(t.column("a").to_pylist(), t.column("b").to_pylist(), strict=True))
    want_nodes, want_roots = dedup.components_local(a, b)
    want = {n: r for n, r in zip(want_nodes.tolist(), want_roots.tolist(), strict=True) if n != r}
    assert got == want
    assert rounds >= 2
