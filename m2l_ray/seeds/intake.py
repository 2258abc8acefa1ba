"""Seed intake at pool scale: read, normalise and select the seed pool on Ray Data.

``seeds.reader.read_seeds`` reads every seed file in the driver, one row at a time: right for
the package's sample and a few MB of a user's own, hopeless for the Aya Collection
(hundreds of millions of rows). Above ``seeds.distributed_min_mb`` of input the pool is
read here instead, and the driver only ever holds the selected seeds and counts.

One read, one shuffle:

1. **Read** (one Ray Data read task per chunk: a JSONL file, or a run of a Parquet
   file's row groups). Rows come from ``seeds.reader.iter_rows`` (the in-memory reader's own
   code: gzip by magic bytes, BOM, row numbers, bad lines quarantined, pruning by
   ``seeds.languages`` / ``seeds.tasks`` before normalisation) and go through
   ``seeds.reader.normalise_row``. The chunk writes its bad rows as one quarantine shard and
   emits a slim key (seed id, group, file, row) per usable row, its own top
   ``per_group_cap`` candidates per (language, task) group, and its counts.
2. **Shuffle** (``groupby("part").map_groups``): keys by seed id into P parts, where
   a part sorts its copies of a seed by (file, row), keeps the first, quarantines the
   others as ``duplicate_seed`` naming it (one shard per part) and counts distinct
   seeds per group; candidates by group into Q parts, where a part merges them into the
   ``per_group_cap`` smallest selection keys of distinct seed ids, each as its earliest
   copy.

The merge is exact: a seed among its group's ``per_group_cap`` smallest keys over the
whole pool is among them in every chunk holding a copy of it, so every such chunk
nominates it with its earliest copy there, and the merge keeps the earliest of those.
So the selection, its seeds' ``source_file`` / ``source_row`` and every quarantine
record equal ``read_seeds`` + ``plan.select`` on the same input and job seed.
Chunks, parts and shard names depend on the input alone, never on the CPUs.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import zlib
from bisect import insort
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any

from m2l_ray.config import SeedsConfig, SeedSource
from m2l_ray.errors import M2LError, SeedError
from m2l_ray.io.formats import format_of
from m2l_ray.languages import LanguageRegistry
from m2l_ray.layout import SEED_QUARANTINE_KEY, SEED_QUARANTINE_SHARDS
from m2l_ray.plan import Selection, select, selection_key
from m2l_ray.seeds.files import parquet_file, source_files
from m2l_ray.seeds.reader import RowFilter, iter_rows, normalise_row, read_seeds
from m2l_ray.seeds.records import Quarantined, ReadCounts, Seed, duplicate_of, quarantine_jsonl

MEMORY, DISTRIBUTED = "memory", "distributed"
MB = 1_000_000
CHUNK_ROWS = 250_000  # Parquet row groups per read task: about this many rows
KEY_BLOCK_ROWS = 200_000  # slim keys per emitted block: bounds a read task's memory
FOOTER_FILES = 64  # up to this many Parquet files, footers are read to split them


@dataclass
class Intake:
    """What the seed pool gave: the selection, and counts small enough for the driver."""

    selection: Selection
    counts: ReadCounts
    files: int
    usable_per_group: dict[str, int]  # "lang/task" -> distinct usable seeds
    quarantine_reasons: dict[str, int]
    mode: str  # MEMORY or DISTRIBUTED
    why: str
    seconds: float = 0.0
    quarantine: list[Quarantined] | None = None  # in memory only; else in the shards
    shards: tuple[str, ...] = ()  # quarantine keys written

    @property
    def usable(self) -> int:
        return sum(self.usable_per_group.values())

    @property
    def quarantined(self) -> int:
        return sum(self.quarantine_reasons.values())

    def usable_per_language(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for grp, n in self.usable_per_group.items():
            out[grp.split("/", 1)[0]] += n
        return out

    def line(self) -> str:
        """The run log's one line about the seeds."""
        reasons = f" {self.quarantine_reasons}" if self.quarantine_reasons else ""
        pruned = f", {self.counts.pruned} pruned by seeds.languages/tasks" if self.counts.pruned else ""
        return (f"read {self.counts.rows_read} rows from {self.files} file(s) ({self.mode}: {self.why}; "
                f"{self.seconds:.1f}s): {self.usable} usable, {self.quarantined} quarantined{reasons}{pruned}")

    def report(self) -> dict[str, Any]:
        """``m2l validate``'s account of the pool."""
        sel = self.selection.groups
        return {
            "intake": {"path": self.mode, "why": self.why, "seconds": round(self.seconds, 2)},
            "pool": {"files": self.files, "files_pruned": self.counts.files_pruned,
                     "rows": self.counts.rows_read, "pruned": self.counts.pruned,
                     "normalised": self.counts.normalised},
            "groups": {g: {"usable": n, "selected": sel.get(g, 0)}
                       for g, n in sorted(self.usable_per_group.items())},
        }


def intake(ctx: Any, store: Any = None, ray_address: str | None = None, mode: str | None = None) -> Intake:
    """Read, quarantine and select the job's seeds by the path the pool's size calls for.

    ``store``: the output, for the quarantine (None: write nothing, as ``m2l validate``).
    ``mode`` forces a path (tests, benchmark); else ``choose`` picks it.
    """
    t0 = time.monotonic()
    cfg = ctx.cfg
    files = [(si, fs, path) for si, src in enumerate(cfg.seeds.sources)
             for fs, path in source_files(src, ctx.storage)]
    why = f"forced ({mode})"
    if mode is None:
        mode, why = choose(cfg.seeds, files)
    run = _in_memory if mode == MEMORY else _distributed
    got = run(cfg.seeds, ctx.registry, frozenset(ctx.task_ids), ctx.storage, cfg.seed, files, store,
              ray_address)
    if store is not None:
        _drop_stale(store, got.shards)
    return replace(got, why=why, seconds=time.monotonic() - t0)


def choose(cfg: SeedsConfig, files: Sequence[tuple[int, Any, str]]) -> tuple[str, str]:
    """Distributed from ``seeds.distributed_min_mb`` of input on, else in memory: Ray
    Data's start-up costs seconds, which a small pool does not repay. Sizes are summed
    only until the threshold (one stat per file), so a huge S3 pool is not listed twice."""
    limit = cfg.distributed_min_mb * MB
    if limit <= 0:
        return DISTRIBUTED, "seeds.distributed_min_mb is 0"
    total = 0
    for _si, fs, path in files:
        total += os.path.getsize(path) if fs is None else fs.get_file_info(path).size
        if total >= limit:
            return DISTRIBUTED, f"input >= seeds.distributed_min_mb ({cfg.distributed_min_mb:g} MB)"
    return MEMORY, f"input {total / MB:.1f} MB < seeds.distributed_min_mb ({cfg.distributed_min_mb:g} MB)"


def _in_memory(cfg: SeedsConfig, registry: LanguageRegistry, task_ids: frozenset[str], storage: Any,
               job_seed: int, files: Sequence[Any], store: Any, ray_address: str | None) -> Intake:
    read = read_seeds(cfg, registry, set(task_ids), storage)
    sel = select(read.seeds, job_seed, cfg.per_group_cap, cfg.languages, cfg.tasks)
    sel = replace(sel, skipped_by_filter=sel.skipped_by_filter + read.pruned)
    shards: tuple[str, ...] = ()
    if store is not None:
        store.put_bytes(SEED_QUARANTINE_KEY, read.quarantine_jsonl())
        shards = (SEED_QUARANTINE_KEY,)
    counts = ReadCounts(read.rows_read, read.pruned, read.normalised, read.files_pruned)
    return Intake(sel, counts, len(read.files), dict(Counter(f"{s.language_code}/{s.task}" for s in read.seeds)),
                  dict(Counter(q.reason for q in read.quarantine)), MEMORY, "", quarantine=read.quarantine,
                  shards=shards)


def _drop_stale(store: Any, written: Sequence[str]) -> None:
    """The quarantine holds this run's records only, whichever reader wrote them."""
    keep = set(written)
    for key in [SEED_QUARANTINE_KEY, *store.list(SEED_QUARANTINE_SHARDS)]:
        if key not in keep and store.exists(key):
            store.delete(key)


# ---------------------------------------------------------------- the distributed path


class TopK:
    """The ``cap`` smallest selection keys of distinct seed ids offered, each with the
    item first offered for it: offered in file order, that is the seed's first copy."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.keys: list[tuple[int, str]] = []
        self.items: dict[str, Any] = {}

    def offer(self, key: tuple[int, str], item: Any) -> None:
        sid = key[1]
        if sid in self.items:
            return
        if len(self.keys) >= self.cap:
            if key >= self.keys[-1]:
                return
            del self.items[self.keys.pop()[1]]
        insort(self.keys, key)
        self.items[sid] = item

    def best(self) -> list[Any]:
        return [self.items[k[1]] for k in self.keys]


@dataclass(frozen=True)
class _Chunk:
    index: int  # names the chunk's quarantine shard
    file: int  # index into the job's file list: file order is reading order
    row_groups: tuple[int, int] | None = None  # Parquet row groups [start, stop); None: all


@dataclass(frozen=True)
class _Job:
    """What every task needs; shipped once per task, so it holds no pool data."""

    seeds: SeedsConfig
    registry: LanguageRegistry
    task_ids: frozenset[str]
    keep: RowFilter | None
    job_seed: int
    files: tuple[tuple[int, Any, str], ...]  # (source index, filesystem, path)
    key_parts: int  # P: seed ids hash into these
    cand_parts: int  # Q: groups hash into these (after the P key parts)
    sink: tuple[str, Any] | None  # (store uri, storage options) for quarantine shards

    def put(self, key: str, records: list[Quarantined]) -> str | None:
        if self.sink is None or not records:
            return None
        from m2l_ray.io import Store

        Store.open(*self.sink).put_bytes(key, quarantine_jsonl(records))
        return key


def _block(kind: str, part: list[int], sid: list[int] | None = None, grp: list[str] | None = None,
           fi: list[int] | None = None, row: list[int] | None = None, data: list[str] | None = None) -> Any:
    """One block of the read stage's output: one schema, a kind column says which rows."""
    import pyarrow as pa

    n = len(part)
    return pa.table({
        "kind": pa.array([kind] * n, pa.string()), "part": pa.array(part, pa.int64()),
        "sid": pa.array(sid if sid is not None else [None] * n, pa.uint64()),
        "grp": pa.array(grp if grp is not None else [None] * n, pa.string()),
        "fi": pa.array(fi if fi is not None else [None] * n, pa.int64()),
        "row": pa.array(row if row is not None else [None] * n, pa.int64()),
        "data": pa.array(data if data is not None else [None] * n, pa.string()),
    })


def _cand_part(job: _Job, grp: str) -> int:
    return job.key_parts + zlib.crc32(grp.encode()) % job.cand_parts


def read_chunk(chunk: _Chunk, file: tuple[int, Any, str], job: _Job) -> Iterator[Any]:
    """One read task: the chunk's rows normalised; keys, candidates, counts out."""
    si, fs, path = file
    source = job.seeds.sources[si]
    counts = ReadCounts()
    bad: list[Quarantined] = []
    tops: dict[str, TopK] = {}
    sids: list[int] = []
    grps: list[str] = []
    rows: list[int] = []
    try:
        for row_no, row, problem in iter_rows(fs, path, source, job.keep, counts, chunk.row_groups):
            if problem is not None:
                bad.append(problem)
                continue
            counts.normalised += 1
            s = normalise_row(row, source, path, row_no, job.registry, job.task_ids, job.seeds)
            if isinstance(s, Quarantined):
                bad.append(s)
                continue
            grp = f"{s.language_code}/{s.task}"
            sids.append(int(s.seed_id, 16))
            grps.append(grp)
            rows.append(row_no)
            tops.setdefault(grp, TopK(job.seeds.per_group_cap)).offer(selection_key(job.job_seed, s.seed_id), s)
            if len(sids) >= KEY_BLOCK_ROWS:
                yield _keys_block(job, chunk, sids, grps, rows)
                sids, grps, rows = [], [], []
        shard = job.put(f"{SEED_QUARANTINE_SHARDS}rows-{chunk.index:05d}.jsonl", bad)
    except M2LError as e:  # the file's (or the storage's) fault: one line on the driver, in file order
        yield _block("e", [job.key_parts], fi=[chunk.file], data=[str(e)])
        return
    if sids:
        yield _keys_block(job, chunk, sids, grps, rows)
    cands = [(g, s) for g, top in tops.items() for s in top.best()]
    if cands:
        yield _block("c", [_cand_part(job, g) for g, _ in cands], grp=[g for g, _ in cands],
                     fi=[chunk.file] * len(cands), row=[s.source_row for _, s in cands],
                     data=[json.dumps(asdict(s), ensure_ascii=False) for _, s in cands])
    stats = {**asdict(counts), "reasons": dict(Counter(q.reason for q in bad)), "shards": [shard] if shard else []}
    yield _block("s", [job.key_parts + chunk.index % job.cand_parts], data=[json.dumps(stats)])


def _keys_block(job: _Job, chunk: _Chunk, sids: list[int], grps: list[str], rows: list[int]) -> Any:
    return _block("k", [s % job.key_parts for s in sids], sid=sids, grp=grps, fi=[chunk.file] * len(sids),
                  row=rows)


def reduce_part(t: Any, job: _Job) -> Any:
    """One part of the shuffle: duplicates of a share of seed ids, or the merge of a
    share of the groups' candidates (plus counts passed on)."""
    import pyarrow as pa

    part = t["part"][0].as_py()
    out: dict[str, list[Any]] = {"kind": [], "grp": [], "n": [], "data": []}

    def emit(kind: str, grp: str | None, n: int, data: str | None) -> None:
        for k, v in zip(out, (kind, grp, n, data), strict=True):
            out[k].append(v)

    if part < job.key_parts:
        _dedup(t, job, part, emit)
    else:
        kinds = t["kind"].to_pylist()
        data = t["data"].to_pylist()
        totals: Counter[str] = Counter()
        reasons: Counter[str] = Counter()
        shards: list[str] = []
        cands = sorted((f, r, g, d) for k, f, r, g, d in zip(kinds, t["fi"].to_pylist(), t["row"].to_pylist(),
                                                             t["grp"].to_pylist(), data, strict=True) if k == "c")
        tops: dict[str, TopK] = {}
        for _f, _r, grp, d in cands:  # file order: a seed's first offered copy is its earliest
            seed = Seed(**json.loads(d))
            tops.setdefault(grp, TopK(job.seeds.per_group_cap)).offer(selection_key(job.job_seed, seed.seed_id), d)
        for grp in sorted(tops):
            for d in tops[grp].best():
                emit("sel", grp, 0, d)
        for k, f, d in zip(kinds, t["fi"].to_pylist(), data, strict=True):
            if k == "e":
                emit("e", None, f, d)
            elif k == "s":
                st = json.loads(d)
                reasons.update(st.pop("reasons"))
                shards += st.pop("shards")
                totals.update(st)
        emit("s", None, 0, json.dumps({**totals, "reasons": reasons, "shards": shards}))
    return pa.table({"kind": pa.array(out["kind"], pa.string()), "grp": pa.array(out["grp"], pa.string()),
                     "n": pa.array(out["n"], pa.int64()), "data": pa.array(out["data"], pa.string())})


def _dedup(t: Any, job: _Job, part: int, emit: Any) -> None:
    """A key part: first copy of each seed id stays; the others become duplicate_seed
    records naming it, written as this part's shard in file/row order."""
    import numpy as np
    import pyarrow.compute as pc

    sid = t["sid"].to_numpy()
    fi = t["fi"].to_numpy()
    row = t["row"].to_numpy()
    order = np.lexsort((row, fi, sid))
    sid, fi, row = sid[order], fi[order], row[order]
    first = np.ones(len(sid), dtype=bool)
    first[1:] = sid[1:] != sid[:-1]
    counts = pc.value_counts(t["grp"].take(order[first]))
    for item in counts.to_pylist():
        emit("n", item["values"], item["counts"], None)
    dups = np.flatnonzero(~first)
    head = np.maximum.accumulate(np.where(first, np.arange(len(sid)), 0))
    paths = [p for _si, _fs, p in job.files]
    recs = [duplicate_of(paths[fi[i]], int(row[i]), paths[fi[head[i]]], int(row[head[i]]))
            for i in sorted(dups, key=lambda i: (fi[i], row[i]))]
    shard = job.put(f"{SEED_QUARANTINE_SHARDS}duplicates-{part:05d}.jsonl", recs)
    emit("s", None, 0, json.dumps({"reasons": {"duplicate_seed": len(recs)} if recs else {},
                                   "shards": [shard] if shard else []}))


def _chunks(job_files: Sequence[tuple[int, Any, str]], source_of: Sequence[SeedSource],
            keep: RowFilter | None) -> tuple[list[_Chunk], int]:
    """(chunks in file order, files pruned by their partition folder). A few Parquet files
    are split by row groups (their footers read here) so that one big file still spreads
    over the CPUs; many are a task each, which spreads them already."""
    live = [i for i, (_si, _fs, p) in enumerate(job_files) if keep is None or not keep.drops_path(p)]
    kinds = {i: (source_of[job_files[i][0]].format if source_of[job_files[i][0]].format != "auto"
                 else format_of(job_files[i][2])) for i in live}
    split = sum(1 for k in kinds.values() if k == "parquet") <= FOOTER_FILES
    out: list[_Chunk] = []
    for i in live:
        ranges: list[tuple[int, int] | None] = [None]
        if split and kinds[i] == "parquet":
            ranges = _row_group_ranges(*job_files[i][1:])
        for rg in ranges:
            out.append(_Chunk(len(out), i, rg))
    return out, len(job_files) - len(live)


def _row_group_ranges(fs: Any, path: str) -> list[tuple[int, int] | None]:
    try:
        meta = parquet_file(fs, path).metadata
    except SeedError:
        return [None]  # its read task reports it, in file order with the others
    ranges: list[tuple[int, int] | None] = []
    start, rows = 0, 0
    for g in range(meta.num_row_groups):
        rows += meta.row_group(g).num_rows
        if rows >= CHUNK_ROWS:
            ranges.append((start, g + 1))
            start, rows = g + 1, 0
    if start < meta.num_row_groups or not ranges:
        ranges.append((start, meta.num_row_groups))
    return ranges


def _datasource(chunks: Sequence[_Chunk], job: _Job) -> Any:
    """A Ray Data datasource with one read task per chunk, in chunk order: Ray Data's
    own readers can't give what the quarantine and the first-copy rule need (the row
    number within the file, bad lines kept instead of fatal)."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class SeedChunks(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[ReadTask]:
            reader = replace(job, files=())  # a read task needs its own file only
            return [ReadTask(partial(read_chunk, c, job.files[c.file], reader),
                             BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None,
                                           input_files=[job.files[c.file][2]]))
                    for c in chunks]

    return SeedChunks()


@contextlib.contextmanager
def _sort_shuffle() -> Iterator[None]:
    """Run the intake's shuffle as Ray Data's sort-based pull shuffle.

    Why: Ray 2.60's default (hash shuffle with aggregator actors) reserves CPUs for its
    aggregators before the read starts; on a local Ray of 2 CPUs that left one read
    task running at a time, and 1M rows took 17 s on 1 or 2 CPUs alike. The shuffled
    rows are slim keys (~60 bytes), so a task-based sort shuffle costs little and every
    CPU reads: 11 s on 2 CPUs. The previous strategy is restored for later stages."""
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    ctx = DataContext.get_current()
    prior = ctx.shuffle_strategy
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        yield
    finally:
        ctx.shuffle_strategy = prior


def _distributed(cfg: SeedsConfig, registry: LanguageRegistry, task_ids: frozenset[str], storage: Any,
                 job_seed: int, files: Sequence[tuple[int, Any, str]], store: Any,
                 ray_address: str | None) -> Intake:
    import ray

    from m2l_ray.ray_session import ray_init

    ray_init(ray_address)
    keep = RowFilter.of(cfg, registry, task_ids)
    job_files = tuple(files)
    chunks, files_pruned = _chunks(job_files, cfg.sources, keep)
    key_parts = max(1, min(256, len(chunks) // 2))
    cand_parts = max(1, min(64, len(chunks) // 4))
    sink = (store.uri, store.options) if store is not None else None
    job = _Job(cfg, registry, task_ids, keep, job_seed, job_files, key_parts, cand_parts, sink)
    counts = ReadCounts(files_pruned=files_pruned)
    usable: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    shards: list[str] = []
    chosen: dict[str, list[Seed]] = {}
    errors: list[tuple[int, str]] = []
    if chunks:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        with _sort_shuffle():
            ds = (ray.data.read_datasource(_datasource(chunks, job),
                                           override_num_blocks=len(chunks))
                  .groupby("part", num_partitions=max(1, min(key_parts + cand_parts, cpus)))
                  .map_groups(reduce_part, batch_format="pyarrow", fn_kwargs={"job": job}))
            rows = ds.take_all()
        for r in rows:
            kind = r["kind"]
            if kind == "n":
                usable[r["grp"]] += r["n"]
            elif kind == "sel":
                chosen.setdefault(r["grp"], []).append(Seed(**json.loads(r["data"])))
            elif kind == "e":
                errors.append((r["n"], r["data"]))
            else:
                st = json.loads(r["data"])
                reasons.update(st.pop("reasons"))
                shards += st.pop("shards")
                for k, v in st.items():
                    setattr(counts, k, getattr(counts, k) + v)
    if errors:
        raise SeedError(min(errors)[1])
    selected = sorted((s for g in chosen.values() for s in g), key=lambda s: s.seed_id)
    groups = {g: len(chosen[g]) for g in sorted(chosen, key=lambda g: tuple(g.split("/", 1)))}
    sel = Selection(selected, counts.pruned, sum(usable.values()) - len(selected), groups)
    return Intake(sel, counts, len(files), dict(usable), dict(reasons), DISTRIBUTED, "",
                  shards=tuple(sorted(shards)))
