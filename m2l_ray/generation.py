"""The generation stage: planned items in, finished work units out.

It builds the Ray Data actor pool (one engine per actor, ``engine_actor``), streams
the conversations out of it and hands each work unit back the moment its last item
returns; it never touches storage (the runner writes what it yields, under the keys
of ``layout``). The driver's main thread owns progress and the stall watchdog; a
reader thread only moves finished blocks from Ray Data into a queue. Ray Data's own
no-progress timeout is off for this dataset: a block of long multi-turn conversations
on slow hardware legitimately runs longer than its 30 minutes, and only the engines'
finished requests say whether the work moves.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa

from m2l_ray.context import JobContext
from m2l_ray.engines.registry import engine_spec
from m2l_ray.errors import M2LError
from m2l_ray.plan import PlannedConversation, planned_requests
from m2l_ray.progress import EngineTally, LiveCounter, Progress, live_poller
from m2l_ray.ray_session import ray_init
from m2l_ray.schema import RAW_SCHEMA
from m2l_ray.watchdog import watched_blocks


class GenerationStage:
    """One pass of the actor pool over the items still to generate.

    ``run`` yields ``(unit, table)`` for every work unit as soon as all its items are
    back (a block retried after an actor died can't duplicate an item: rows are keyed
    by item key, and a unit already handed out is never handed out again); ``stats``
    holds the stage's summary once ``run`` is exhausted.
    """

    def __init__(self, ctx: JobContext, emit: Callable[[str], None]) -> None:
        self.ctx = ctx
        self.emit = emit
        self.stats: dict[str, Any] = {}

    def run(
        self, todo: Sequence[PlannedConversation], units: Mapping[int, Sequence[PlannedConversation]]
    ) -> Iterator[tuple[int, pa.Table]]:
        import ray
        from ray.data import ActorPoolStrategy

        from m2l_ray.engine_actor import (
            ActorDeathLogFilter,
            ConversationGenerator,
            dead_engine_error,
            pool_settings,
        )
        from m2l_ray.placement import preflight

        cfg = self.ctx.cfg
        ray_init()
        actors = preflight(cfg.engine)  # per node: an engine (or tensor-parallel group) fits on one node
        n_actors = actors.actors
        settings = pool_settings(cfg.engine, len(todo), engine_spec(cfg.engine.kind).in_flight(cfg), n_actors)
        planned = sum(planned_requests(p) for p in todo)
        self.emit(f"[generate] {len(todo)} conversations ({planned} requests if none fails) on {n_actors} "
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
        out.context.execution_no_progress_timeout_s = -1  # our watchdog instead (module docstring)
        pending: dict[int, dict[str, dict]] = defaultdict(dict)
        expected = {u: len(ps) for u, ps in units.items()}
        prog = Progress("generate", len(todo), planned, cfg.output.progress_seconds, self.emit,
                        engines_expected=n_actors)
        finished: set[int] = set()
        blocks = watched_blocks(out, prog, live_poller(counter), cfg.engine.stall_seconds,
                                cfg.engine.start_seconds, lambda e: dead_engine_error(e, cfg.engine.max_restarts))
        for batch in blocks:
            # a unit already handed out (its block's rows seen twice after a retry) is not again
            rows = [r for r in batch.to_pylist() if r["work_unit"] not in finished]
            n_req = sum(n for r in rows for _, _, n in json.loads(r["usage"] or "{}").values())
            for r in rows:
                pending[r["work_unit"]][r["key"]] = r
            for u in [u for u, rs in pending.items() if len(rs) >= expected[u]]:
                rs = [r for _, r in sorted(pending.pop(u).items())]
                yield u, pa.Table.from_pylist(rs, schema=RAW_SCHEMA)
                finished.add(u)
            prog.returned(len(rows), sum(r["status"] != "ok" for r in rows), n_req,
                          sum(r["completion_tokens"] for r in rows))
        cache = _final_prefix_cache(counter)
        ray.kill(counter)
        prog.drop_live()  # the last line: rows returned, exact
        prog.tick(force=True)
        if cache:
            self.emit(f"[generate] prefix cache: {cache['hit_rate']:.0%} of {cache['queried_tokens']} "
                      "prompt tokens were served from the engines' cache")
        if pending:
            raise M2LError(f"generation ended with incomplete units {sorted(pending)[:5]}; rerun to resume")
        self.stats = {
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

    from m2l_ray.engine_actor import ConversationGenerator

    time.sleep(1.5 * ConversationGenerator.REPORT_SECONDS)
    try:
        t = EngineTally(**ray.get(counter.get.remote(), timeout=10)["tally"])
    except Exception:  # noqa: BLE001 - a statistic: never fail the job for it
        return {}
    if not t.prefix_queries:
        return {}
    return {"queried_tokens": t.prefix_queries, "hit_tokens": t.prefix_hits,
            "hit_rate": round(t.prefix_hits / t.prefix_queries, 3)}
