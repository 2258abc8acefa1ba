"""Single-node MinHash-LSH dedup: the stages of the dedup package on one machine, without Ray.

Why a second path: on inputs that fit one machine, Ray Data's fixed costs (worker
start-up per stage and shuffle, every document moved through Arrow blocks and the
object store) cost more than the hashing itself: ``m2l dedup`` took 21.7 s for
100K documents whose kernel work is under 2 CPU-seconds. Here the same functions
run on one in-memory Arrow table:

1. **Signatures**: ``signatures.signature_arrays`` over chunks of ``SIGNATURE_CHUNK``
   rows, spread over a pool of forked worker processes (the table is inherited
   copy-on-write, so nothing is sent to them; they return nodes and band keys).
2. **Buckets**: per band, ``candidates.bucket_edges`` (one sort finds the repeated keys;
   star edges from each bucket's smallest node), bands on threads (numpy sorts
   release the GIL).
3. **Verification**: payloads (``signatures.verify_payload``) of the candidate nodes only,
   again on the pool, then ``candidates.verify_local``.
4. **Components and assignment**: ``components.components_local`` (scipy) and
   ``assign.assign_arrays``.

The candidate edges, the verification and the kept member (the smallest node of a
component; among rows of one node, the first) are those of the Ray path, so both
give the same clusters and keep the same rows; tests/test_curation_dedup_local.py
compares them. One difference can exist in principle: Ray buckets rows by band key
alone, this path by (band, key); two different bands giving the same 64-bit key
(probability about (rows x bands)^2 / 2^65) would add a candidate edge there only.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from m2l_ray.curation import kernel, minhash
from m2l_ray.curation.config import DedupConfig
from m2l_ray.curation.dedup.arrays import bool_array, gather_lists, list_arrays, lookup, unique_pairs
from m2l_ray.curation.dedup.assign import (
    CLUSTER,
    DUPLICATE,
    annotate_table,
    assign_arrays,
    cluster_stats,
    exact_groups,
)
from m2l_ray.curation.dedup.candidates import bucket_edges, verify_local
from m2l_ray.curation.dedup.components import components_local
from m2l_ray.curation.dedup.driver import Clock, base_stats
from m2l_ray.curation.dedup.signatures import (
    FROM_CONFIG,
    HELPERS,
    SIGNATURE_CHUNK,
    TextSpec,
    signature_arrays,
    text_spec,
    verify_payload,
)

#: Rows per pool task: enough chunks to amortise the task round trip, few enough
#: that both workers stay busy until the end.
TASK_ROWS = 16 * SIGNATURE_CHUNK
#: Below this many rows the pool's start-up costs more than it saves.
POOL_MIN_ROWS = 4 * TASK_ROWS

# The table and spec of the run in progress, set before the pool forks so that the
# workers inherit them instead of receiving them by pickle.
_STATE: dict[str, Any] = {}


@dataclass
class LocalResult:
    """The input table, each row's root node and duplicate flag, and the stats."""

    table: pa.Table
    root: np.ndarray  # int64 per row: the node of the member its cluster keeps
    duplicate: np.ndarray  # bool per row (never True for ineligible rows)
    eligible_field: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    def annotated(self) -> pa.Table:
        """Every row plus ``dedup_cluster`` and ``dedup_duplicate`` (as the Ray path)."""
        return annotate_table(self.table, self.root, self.duplicate, self.eligible_field)

    def kept(self) -> pa.Table:
        """The rows that survive, with the input's columns only (less any stale
        ``dedup_cluster`` / ``dedup_duplicate``, as on the Ray path)."""
        t = self.table.drop_columns([c for c in (CLUSTER, DUPLICATE) if c in self.table.column_names])
        return t.filter(bool_array(~self.duplicate))


def default_workers() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _signature_task(bounds: tuple[int, int]) -> dict[str, np.ndarray]:
    """Signature pass over rows [lo, hi), chunk by chunk; with exact verification the
    shingles come back too (cheaper to ship than to recompute for the candidates)."""
    lo, hi = bounds
    t, spec = _STATE["table"], _STATE["spec"]
    keep = spec.payload == "exact"
    parts = [signature_arrays(t.slice(i, min(SIGNATURE_CHUNK, hi - i)), spec, keep)
             for i in range(lo, hi, SIGNATURE_CHUNK)]
    out = {"node": np.concatenate([p.node for p in parts]),
           "bk": np.concatenate([p.band_keys for p in parts]),
           "nsh": np.concatenate([p.n_shingles for p in parts]),
           "ok": np.concatenate([p.eligible for p in parts])}
    if keep:
        out["h"] = np.concatenate([p.shingles[0] for p in parts if p.shingles])
    return out


def _payload_task(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Verification payloads (shingle sets or signatures) of rows ``idx``, in order."""
    t, spec = _STATE["table"], _STATE["spec"]
    vals, lens = [], []
    for i in range(0, len(idx), SIGNATURE_CHUNK):
        sub = t.take(pa.array(idx[i : i + SIGNATURE_CHUNK]))
        v, o = list_arrays(verify_payload(sub, spec))
        vals.append(np.asarray(v, dtype=np.uint32))
        lens.append(np.diff(o))
    if not vals:
        return np.empty(0, np.uint32), np.zeros(1, np.int64)
    lens_ = np.concatenate(lens)
    return np.concatenate(vals), np.concatenate([[0], np.cumsum(lens_)]).astype(np.int64)


class _Runner:
    """Maps a task over pieces: on threads when the compiled kernel does the hashing
    (it releases the GIL, and threads share the table and the loaded kernel), else on
    a forked process pool when that pays, else inline."""

    def __init__(self, workers: int, n_rows: int) -> None:
        self.pool: Any = None
        self.threads: ThreadPoolExecutor | None = None
        if workers > 1 and n_rows >= POOL_MIN_ROWS:
            if kernel.available():
                self.threads = ThreadPoolExecutor(workers)
            elif "fork" in mp.get_all_start_methods():
                self.pool = mp.get_context("fork").Pool(workers)
        self.workers = workers if self.pool is not None or self.threads is not None else 1
        self.kind = "threads" if self.threads else "processes" if self.pool else "inline"

    def map(self, fn: Any, pieces: list[Any]) -> list[Any]:
        if self.threads is not None:
            return list(self.threads.map(fn, pieces))
        if self.pool is None:
            return [fn(p) for p in pieces]
        return self.pool.map(fn, pieces, chunksize=1)

    def close(self) -> None:
        if self.threads is not None:
            self.threads.shutdown()
        if self.pool is not None:
            self.pool.close()
            self.pool.join()


def _import_scipy() -> None:
    import scipy.sparse.csgraph  # noqa: F401


def _work_columns(table: pa.Table, spec: TextSpec) -> pa.Table:
    """The columns the hashing reads: every column when the key is the whole row."""
    if spec.key_field is None:
        return table
    want = [spec.column, spec.key_field, spec.language_field, spec.eligible_field]
    return table.select(list(dict.fromkeys(c for c in want if c is not None)))


def candidate_edges(band_keys: np.ndarray, node: np.ndarray, valid: np.ndarray,
                    threads: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct star edges of all buckets, band by band (bands on threads)."""
    v = node[valid]
    keys = band_keys[valid]

    def one(j: int) -> tuple[np.ndarray, np.ndarray]:
        return bucket_edges(np.ascontiguousarray(keys[:, j]), v)

    with ThreadPoolExecutor(max(1, threads)) as ex:
        parts = list(ex.map(one, range(keys.shape[1])))
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return unique_pairs(np.concatenate([p[0] for p in parts]),
                        np.concatenate([p[1] for p in parts]))


def dedup_table(
    table: pa.Table,
    cfg: DedupConfig,
    *,
    column: str | None = None,
    registry: Any = None,
    language_field: str | None = None,
    eligible_field: str | None = None,
    key_field: str | None = FROM_CONFIG,
    workers: int | None = None,
) -> LocalResult:
    """``dedup.dedup`` on an in-memory table, in this process and a pool of ``workers``.

    Arguments mean what they mean for ``dedup.dedup``; the result is the same
    annotation (``LocalResult.annotated``) with the same stats keys, plus
    ``components: "local"`` and the worker count.
    """
    clock = Clock()
    spec, params = text_spec(cfg, column=column, registry=registry,
                             language_field=language_field, eligible_field=eligible_field,
                             key_field=key_field)
    n = table.num_rows
    table = table.drop_columns([c for c in HELPERS if c in table.column_names])
    stats = base_stats(cfg, params, n)
    # the state must be in place before the pool forks: the workers inherit it
    _STATE.update(table=_work_columns(table, spec), spec=spec)
    runner: _Runner | None = None
    # without the kernel, scipy (0.3 s to import, for the components) loads while the
    # pool hashes
    preload = threading.Thread(target=_import_scipy, daemon=True)
    if not kernel.available():
        preload.start()
    try:
        runner = _Runner(workers or default_workers(), n)
        pieces = [(lo, min(lo + TASK_ROWS, n)) for lo in range(0, n, TASK_ROWS)]
        res = runner.map(_signature_task, pieces)
        node = _cat(res, "node", np.int64)
        bk = np.concatenate([r["bk"] for r in res]) if res else \
            np.empty((0, params.bands), np.int64)
        nsh = _cat(res, "nsh", np.int32)
        ok = _cat(res, "ok", bool)
        payload = None
        if spec.payload == "exact":  # every row's shingles: the verification payload
            payload = (_cat(res, "h", np.uint32),
                       np.concatenate([[0], np.cumsum(nsh, dtype=np.int64)]))
        del res
        clock.lap("signatures")
        row = np.arange(n, dtype=np.int64)  # first row of identical keys survives
        dup_nodes, dup_reps, dup_counts = exact_groups(node[ok], row[ok])
        stats["exact_duplicates"] = int((dup_counts - 1).sum())
        clock.lap("identical_keys")

        a, b = candidate_edges(bk, node, nsh > 0, runner.workers)
        del bk
        stats["candidate_edges"] = int(len(a))
        clock.lap("buckets")
        if cfg.verify != "none" and len(a):
            keep = _verify(a, b, node, runner, params.threshold, cfg.verify, payload)
            a, b = a[keep], b[keep]
        stats["verified_edges"] = int(len(a))
        clock.lap("verify")
    finally:
        if runner is not None:
            runner.close()
        _STATE.clear()
    if preload.is_alive():
        preload.join()
    stats["components"] = "local"
    stats["workers"] = runner.workers
    stats["pool"] = runner.kind
    stats["kernel"] = "numba" if kernel.available() else "numpy"
    nodes, roots = components_local(a, b)
    clock.lap("components")
    root, dup = assign_arrays(node, row, nodes, roots, dup_nodes, dup_reps)
    dup &= ok
    stats.update(cluster_stats(nodes, roots, dup_nodes, dup_counts))
    clock.lap("assign")
    stats.update({"lsh": minhash.describe(params), "seconds": clock.laps})
    return LocalResult(table, root, dup, eligible_field, stats)


def _cat(parts: list[dict[str, np.ndarray]], key: str, dtype: Any) -> np.ndarray:
    return np.concatenate([p[key] for p in parts]) if parts else np.empty(0, dtype)


def _verify(a: np.ndarray, b: np.ndarray, node: np.ndarray, runner: _Runner,
            threshold: float, mode: str,
            payload: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Mask of candidate edges that pass verification; payloads from the first row of
    each node on an edge (the row the Ray path's driver verification also takes).
    ``payload`` holds every row's shingles (exact mode); else they are recomputed
    for the candidate rows on the pool."""
    want = np.unique(np.concatenate([a, b]))
    hit, _ = lookup(want, node)
    idx = np.flatnonzero(hit)
    nodes, first = np.unique(node[idx], return_index=True)
    rows = idx[first]  # sorted by node
    if payload is not None:
        vals, offs = gather_lists(payload[0], payload[1], rows)
    else:
        step = max(SIGNATURE_CHUNK, -(-len(rows) // (4 * runner.workers)))
        res = runner.map(_payload_task, [rows[i : i + step]
                                         for i in range(0, len(rows), step)])
        vals = np.concatenate([r[0] for r in res])
        lens = np.concatenate([np.diff(r[1]) for r in res])
        offs = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return verify_local(a, b, nodes, vals, offs, threshold, mode)
