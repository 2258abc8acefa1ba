"""The job, end to end: seeds -> select -> plan -> generate -> raw -> curate -> final.

The runner owns what every step must not: the output's lock, the resume check, the
store keys (``layout``), the progress lines and the commit (stats, card, report,
then the manifest, written last). Steps hand it tables: the seed intake a selection,
``GenerationStage`` finished work units, ``finalize`` the three configs. ``m2l
validate`` runs the runner's own planning (``Runner.plan``) and stops there, so what
it prints is what a run would make.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from m2l_ray import layout
from m2l_ray.config import JobConfig
from m2l_ray.context import JobContext, check_seed_languages, prepare
from m2l_ray.engines.registry import engine_spec
from m2l_ray.errors import M2LError, StorageError
from m2l_ray.plan import PlannedConversation, Selection, plan, planned_requests
from m2l_ray.provenance import versions
from m2l_ray.schema import RAW_SCHEMA
from m2l_ray.seeds.records import Seed


@dataclass
class RunOptions:
    ray_address: str | None = None
    force_lock: bool = False
    restart: bool = False  # discard unfinished raw units (of another config or plan) first
    emit: Callable[[str], None] = print


@dataclass
class JobPlan:
    """What a run would make: the seeds read and selected, the planned items and their
    work units, the rows per output config if nothing fails."""

    seeds: Any  # seeds.intake.Intake
    planned: list[PlannedConversation]
    shape: dict[str, int]
    seed_warnings: list[str] = field(default_factory=list)  # LID coverage of the languages found

    @property
    def selection(self) -> Selection:
        return self.seeds.selection

    def units(self) -> dict[int, list[PlannedConversation]]:
        out: dict[int, list[PlannedConversation]] = defaultdict(list)
        for p in self.planned:
            out[p.work_unit].append(p)
        return dict(out)


def plan_items(ctx: JobContext, sel: Selection) -> list[PlannedConversation]:
    """The plan of a job's selection (deterministic: job seed + seed ids)."""
    cfg = ctx.cfg
    return plan(
        sel.selected, ctx.taxonomy, cfg.seed, cfg.turns.min, cfg.turns.max,
        cfg.output.work_unit_size, cfg.engine.evol_attempts, cfg.evol.per_seed, cfg.evol.multiturn_share,
    )


def planned_shape(selected: Sequence[Seed], planned: Sequence[PlannedConversation]) -> dict[str, int]:
    """Rows per output config if nothing fails, and the requests they cost."""
    seeds = sum(1 for s in selected if s.reference_answer)
    evolved = len(planned)
    multi = sum(1 for p in planned if p.turns > 1)
    return {
        "seed_rows": seeds,
        "evolved_pairs": evolved,
        "multiturn_conversations": multi,
        "requests": sum(planned_requests(p) for p in planned),
        "rows_seed_data": seeds,
        "rows_seed_evol_data": evolved,
        "rows_full_data": seeds + evolved + multi,
    }


class Runner:
    """Runs (or resumes) one job on one output."""

    def __init__(self, cfg: JobConfig, opts: RunOptions | None = None) -> None:
        self.cfg = cfg
        self.opts = opts or RunOptions()
        self.emit = self.opts.emit
        self.ctx = prepare(cfg)

    # ------------------------------------------------------------ planning (shared with validate)

    def plan(self, store: Any = None) -> JobPlan:
        """Read, quarantine and select the seeds (on Ray Data for a large pool), then plan.

        ``store`` None (``m2l validate``): nothing is written, not even the quarantine."""
        from m2l_ray.seeds.intake import intake

        seeds = intake(self.ctx, store, self.opts.ray_address)
        planned = plan_items(self.ctx, seeds.selection)
        found = {s.language_code for s in seeds.selection.selected}
        # with a language list, prepare() already checked LID coverage (ctx.warnings)
        warnings = [] if self.cfg.seeds.languages else check_seed_languages(self.ctx, found)
        return JobPlan(seeds, planned, planned_shape(seeds.selection.selected, planned), warnings)

    def preflight(self) -> None:
        """The engine's own checks (a bad key, an unknown model, a missing model folder),
        before anything fans out."""
        engine_spec(self.cfg.engine.kind).preflight(self.cfg)

    def validate(self) -> dict[str, Any]:
        """What ``m2l validate`` prints: the plan of a run, without writing anything."""
        t0 = time.monotonic()
        self.preflight()
        job = self.plan(store=None)
        sel, planned = job.selection, job.planned
        return {
            "config_hash": self.cfg.config_hash(),
            "seeds_read": job.seeds.counts.rows_read,
            "seeds_usable": job.seeds.usable,
            "quarantined": job.seeds.quarantine_reasons,
            "selected": len(sel.selected),
            "selection_digest": sel.digest(),
            "languages": len({p.language_code for p in planned}),
            "tasks": len({p.task for p in planned}),
            "work_units": len({p.work_unit for p in planned}),
            "turns": dict(sorted(Counter(p.turns for p in planned).items())),
            "planned": job.shape,
            "warnings": [*self.ctx.warnings, *job.seed_warnings],
            **job.seeds.report(),
            "seconds": round(time.monotonic() - t0, 2),
        }

    # ------------------------------------------------------------ run

    def run(self) -> dict[str, Any]:
        """Run or resume; returns the summary that also lands in stats.json."""
        from m2l_ray.io import Store

        cfg, emit = self.cfg, self.emit
        t0 = time.monotonic()
        for w in self.ctx.warnings:
            emit(f"[config] {w}")
        store = Store.open(cfg.output.uri, self.ctx.storage)
        store.check_reachable()
        config_hash = cfg.config_hash()
        if store.exists(layout.MANIFEST_KEY):
            manifest = store.get_json(layout.MANIFEST_KEY)
            if manifest.get("config_hash") == config_hash:
                emit(f"[m2l] {cfg.output.uri} already holds the finished output of this config "
                     f"({config_hash}); nothing to do")
                return {**manifest.get("summary", {}), "already_complete": True}
            raise M2LError(
                f"{cfg.output.uri} holds a finished job with another config "
                f"({manifest.get('config_hash')}, this one is {config_hash}); use a new output.uri"
            )
        self.preflight()  # before the lock and any work
        run_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._acquire(store, run_id)
        try:
            return self._run_locked(store, t0)
        finally:
            store.release_lock(layout.LOCK_KEY, run_id)

    def _acquire(self, store: Any, run_id: str) -> None:
        """Take the output lock; a lock left by a dead run on this host is taken over.

        A crashed or killed driver can't release its lock; "rerun the same command" must
        still work, so a holder on this host whose pid is gone counts as dead. A holder
        on another host is only taken over with --force-lock.
        """
        try:
            store.acquire_lock(layout.LOCK_KEY, run_id, force=self.opts.force_lock)
            return
        except StorageError:
            holder = store.read_lock(layout.LOCK_KEY) or {}
            if holder.get("host") != socket.gethostname() or _pid_alive(holder.get("pid")):
                raise
        self.emit(f"[m2l] taking over the lock of run {holder.get('run_id')}: its process "
                  f"{holder.get('pid')} on this host is gone")
        store.acquire_lock(layout.LOCK_KEY, run_id, force=True)

    def _run_locked(self, store: Any, t0: float) -> dict[str, Any]:
        from m2l_ray.finalize import finalize, lines
        from m2l_ray.generation import GenerationStage
        from m2l_ray.ray_session import ray_init
        from m2l_ray.resume import reusable_units

        cfg, emit = self.cfg, self.emit
        job = self._plan_for_run(store)
        sel, units = job.selection, job.units()
        done_units = reusable_units(store, cfg, units, self.opts.restart)
        todo = [p for p in job.planned if p.work_unit not in done_units]
        emit(f"[plan] {len(job.planned)} items in {len(units)} work units "
             f"({len(sel.groups)} language x task groups); {len(done_units)} units already in raw/, "
             f"{len(todo)} items to generate")

        gen_stats: dict[str, Any] = {"generated": 0, "tokens_per_second": 0.0, "seconds": 0.0}
        ray_init(self.opts.ray_address)
        if todo:
            stage = GenerationStage(self.ctx, emit)
            for unit, table in stage.run(todo, units):
                store.write_parquet(layout.unit_key(unit), table)
            gen_stats = stage.stats

        raw = pa.concat_tables([store.read_parquet(layout.unit_key(u)).select(RAW_SCHEMA.names).cast(RAW_SCHEMA)
                                for u in sorted(units)])
        out = finalize(self.ctx, raw, sel.selected)
        shards = self._write_configs(store, out.tables)
        store.write_parquet(layout.CURATION_QUARANTINE_KEY, out.dropped)
        for line in lines(out, raw.num_rows):
            emit(line)
        seeds = job.seeds
        chosen = Counter(s.language_code for s in sel.selected)
        summary = out.summary
        summary.update(
            seeds_read=seeds.counts.rows_read,
            seeds_usable=seeds.usable,
            seeds_quarantined=seeds.quarantined,
            quarantine_reasons=seeds.quarantine_reasons,
            seeds_selected=len(sel.selected),
            seeds_over_cap=sel.over_cap,
            seeds_filtered_out=sel.skipped_by_filter,
            work_units=len(units),
            work_units_resumed=len(done_units),
            seeds_per_language={c: {"usable": n, "selected": chosen[c]}
                                for c, n in sorted(seeds.usable_per_language().items()) if chosen[c]},
            generation=gen_stats,
            elapsed_seconds=round(time.monotonic() - t0, 1),
        )
        return self._commit(store, summary, shards)

    def _plan_for_run(self, store: Any) -> JobPlan:
        cfg, emit = self.cfg, self.emit
        job = self.plan(store)
        emit(f"[seeds] {job.seeds.line()}")
        for w in job.seed_warnings:  # the config's own were printed at the start
            emit(f"[config] {w}")
        if not job.planned:
            raise M2LError("no seeds selected: check seeds.sources, seeds.languages and seeds.tasks "
                           f"(quarantine: {job.seeds.quarantine_reasons})")
        s = job.shape
        emit(f"[plan] {s['seed_rows']} seed rows, {s['evolved_pairs']} evolved pairs "
             f"({cfg.evol.per_seed} per seed), {s['multiturn_conversations']} of them grown into "
             f"multi-turn conversations; {s['requests']} requests if none fails")
        return job

    def _write_configs(self, store: Any, tables: dict[str, pa.Table]) -> list[dict[str, Any]]:
        """Each config as deterministic shards of ``output.shard_rows`` rows, in the
        output's format; shards of an earlier, larger attempt don't linger beside them.
        An empty config is one empty shard, or none in a format that can't say its
        columns without rows (JSONL): the card then leaves that config out."""
        from m2l_ray.io.writers import writer_for

        writer = writer_for(self.cfg.output.format)
        rows = self.cfg.output.shard_rows
        shards = []
        for name, table in tables.items():
            n = math.ceil(table.num_rows / rows) or int(writer.empty_keeps_schema)
            for i in range(n):
                meta = writer.write(store, layout.shard_key(name, i, writer.suffix), table.slice(i * rows, rows))
                shards.append({**meta, "config": name})
        written = {s["key"] for s in shards}
        for name in tables:
            for k in store.list(f"{name}/"):
                if k not in written:
                    store.delete(k)
        return shards

    def _commit(self, store: Any, summary: dict[str, Any], shards: list[dict[str, Any]]) -> dict[str, Any]:
        """stats, card, report, then the manifest: the one write that publishes the dataset."""
        from m2l_ray.card import dataset_card

        cfg, emit = self.cfg, self.emit
        store.put_json(layout.STATS_KEY, summary)
        store.put_bytes(layout.CARD_KEY, dataset_card(cfg, summary, shards).encode("utf-8"))
        manifest = {
            "format": "m2l-ray/1",
            "job": cfg.name,
            "config_hash": cfg.config_hash(),
            "config": cfg.to_dict(),
            "versions": versions(),
            "model": cfg.engine.model,
            "shards": shards,
            "rows": dict(summary["rows"]),  # per config
            "summary": summary,
        }
        try:  # derived from what is written above; losing it must not lose the run
            from m2l_ray.report import write_report

            emit(f"[report] {write_report(store, manifest)}")
        except Exception as e:  # noqa: BLE001 - `m2l report OUTPUT` rebuilds it from the output
            emit(f"[report] not written ({type(e).__name__}: {e}); run `m2l report {store.uri}`")
        store.put_json(layout.MANIFEST_KEY, manifest)
        emit(f"[done] {manifest['rows']['full_data']} rows in {len(shards)} shard(s) of "
             f"{len({s['config'] for s in shards})} configs at {store.uri}; "
             f"manifest {store.key_uri(layout.MANIFEST_KEY)}")
        emit("[summary] " + json.dumps(_short(summary), ensure_ascii=False))
        return summary


def run(cfg: JobConfig, opts: RunOptions | None = None) -> dict[str, Any]:
    """Run (or resume) a job; returns the summary that also lands in stats.json."""
    return Runner(cfg, opts).run()


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _short(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("seeds_read", "seeds_quarantined", "seeds_selected", "conversations_raw",
            "conversations_ok", "conversations_failed", "conversations_final", "failed_steps",
            "drop_reasons", "prompt_tokens", "completion_tokens", "elapsed_seconds")
    return {k: summary.get(k) for k in keys}
