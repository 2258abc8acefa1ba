"""The engine actor of the generation stage: one engine per Ray Data actor.

``map_batches`` with an async callable class: Ray Data runs several small batches
of one block concurrently inside an actor, and several blocks per actor at once,
all on the actor's one event loop. Every conversation awaits its own steps, so the
engine always has many requests in flight and its continuous batching stays full;
no batch waits on its slowest row before the next step can start.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from m2l_ray.config import EngineConfig, JobConfig
from m2l_ray.engines.base import Completion, Engine, EngineDead, RequestFailed, StepParams
from m2l_ray.engines.registry import build_engine
from m2l_ray.errors import M2LError
from m2l_ray.plan import PlannedConversation, planned_requests
from m2l_ray.progress import EngineTally
from m2l_ray.schema import RAW_SCHEMA

log = logging.getLogger(__name__)

#: Ray Data runs this many async batches of one block concurrently (its default is 4).
ASYNC_BATCHES_PER_TASK = 4
#: conversations in flight per engine, as a multiple of its batch (pool_settings)
QUEUE_FACTOR = 4.0


class _CountedEngine:
    """The actor's engine, counting every finished request into the actor's tally.

    The Synthesizer sends every step through ``chat``, so this one wrapper sees every
    request of every conversation whatever the engine kind.
    """

    def __init__(self, engine: Engine, tally: EngineTally) -> None:
        self.engine = engine
        self.kind = engine.kind
        self.model = engine.model
        self.tally = tally
        self.by_item: dict[str, int] = defaultdict(int)  # requests per planned item so far

    async def chat(
        self, messages: Sequence[dict[str, str]], params: StepParams, request_id: str
    ) -> Completion:
        try:
            c = await self.engine.chat(messages, params, request_id)
        except RequestFailed:
            self._count(request_id, 0)
            raise
        self._count(request_id, c.completion_tokens)
        return c

    def _count(self, request_id: str, tokens: int) -> None:
        self.tally.requests += 1
        self.by_item[request_id.split(":", 1)[0]] += 1
        self.tally.finished_tokens += tokens
        self.refresh_tokens()

    def refresh_tokens(self) -> None:
        """Engines that stream (vLLM) count tokens as they come; the others when done."""
        self.tally.tokens = max(self.tally.finished_tokens, getattr(self.engine, "generated_tokens", 0))

    def close(self) -> None:
        self.engine.close()


class ConversationGenerator:
    """Ray Data UDF: owns one engine; turns planned rows into conversation rows.

    It reports to the job's ``LiveCounter``: once when its engine is up (with the
    engine's note, e.g. the dtype it chose), then a snapshot of its tally at most
    every ``REPORT_SECONDS`` while requests finish or tokens stream.
    """

    REPORT_SECONDS = 1.0

    def __init__(self, cfg: JobConfig, counter: Any = None) -> None:
        from m2l_ray.context import build_synthesizer

        t0 = time.monotonic()
        engine = build_engine(cfg)
        self.tally = EngineTally()
        self.engine = _CountedEngine(engine, self.tally)
        self.synth = build_synthesizer(cfg, self.engine)
        self.counter = counter  # progress.LiveCounter actor handle, or None
        self.actor_id = uuid.uuid4().hex
        self._reporter: asyncio.Task[None] | None = None
        note = getattr(engine, "note", "")
        if note:
            log.info("engine up: %s", note)
        if counter is not None:
            counter.engine_ready.remote({
                "node": _node_name(), "load_seconds": round(time.monotonic() - t0, 1),
                "note": note,
            })

    async def _report_loop(self) -> None:
        """Send the tally when it changed; streamed tokens change it between requests."""
        sent: dict[str, int] = {}
        while True:
            self.engine.refresh_tokens()
            cache = getattr(self.engine.engine, "prefix_cache", None)
            if cache:
                self.tally.prefix_queries, self.tally.prefix_hits = cache["queries"], cache["hits"]
            now = self.tally.to_dict()
            if now != sent:
                self.counter.report.remote(self.actor_id, now)  # fire-and-forget: progress only
                sent = now
            await asyncio.sleep(self.REPORT_SECONDS)

    async def _run(self, p: PlannedConversation) -> dict[str, Any]:
        row = await self.synth.run(p)
        self.tally.conversations += 1
        self.tally.failed += int(row["status"] != "ok")
        self.tally.plan_delta += self.engine.by_item.pop(p.key, 0) - planned_requests(p)
        return row

    async def __call__(self, batch: pa.Table) -> pa.Table:
        if self.counter is not None and self._reporter is None:
            self._reporter = asyncio.get_running_loop().create_task(self._report_loop())
        rows = batch.to_pylist()
        planned = [PlannedConversation.from_row(r) for r in rows]
        try:
            results = await asyncio.gather(*(self._run(p) for p in planned))
        except EngineDead as e:
            # Retrying on a dead engine loops forever; dying lets Ray start a fresh actor
            # (bounded by engine restarts) and retry this block there.
            log.error("vLLM engine died (%s); exiting the actor so Ray replaces it", e)
            os._exit(1)
        return pa.Table.from_pylist(list(results), schema=RAW_SCHEMA)


def dead_engine_error(exc: BaseException, max_restarts: int) -> M2LError | None:
    """The stage's error when ``exc`` comes from an engine actor that died for good.

    A dead vLLM engine ends its actor (``__call__`` above) and Ray restarts it up to
    ``engine.max_restarts`` times, retrying its block; past that, Ray Data raises an
    actor-death error several wrappers deep, whose traceback says nothing about the
    knob or the resume. None when the failure is something else.
    """
    if not actor_died(exc):
        return None
    return M2LError(
        f"[generate] an engine actor died after {max_restarts} restart(s) "
        f"(engine.max_restarts={max_restarts}): its engine keeps dying (out of memory, "
        "a killed process, a device fault). Check the engine actors' logs (`ray logs`, "
        "the dashboard) and the node's memory; raise engine.max_restarts if deaths are "
        "rare and expected. Finished work units are kept: a rerun of the same command resumes."
    )


def actor_died(exc: BaseException | None) -> bool:
    """Whether an actor's death is anywhere in ``exc``'s chain of causes."""
    from ray.exceptions import RayActorError

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, RayActorError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class ActorDeathLogFilter(logging.Filter):
    """Keeps Ray Data from logging an engine actor's death with tracebacks (and as a Ray
    bug to report, which it is not).

    The stage reports it as one line (``dead_engine_error``); the engine actor's own log
    (forwarded to the driver) keeps the engine's traceback, which says why it died. Ray
    Data logs some of these records inside its ``except`` block without attaching the
    exception, so the one being handled counts too."""

    LOGGERS = ("ray.data._internal.execution.streaming_executor_state", "ray.data.exceptions")

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return not actor_died(exc)

    @classmethod
    def install(cls) -> None:
        for name in cls.LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, cls) for f in logger.filters):
                logger.addFilter(cls())


def _node_name() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - a label for the log only
        return socket.gethostname()


def pool_settings(
    cfg: EngineConfig, rows: int, engine_capacity: int | None = None, actors: int = 1
) -> dict[str, Any]:
    """Block size and tasks in flight so that each engine sees ``QUEUE_FACTOR`` x its
    capacity in conversations.

    Capacity: vLLM's max_num_seqs, or the openai engine's per-actor in-flight bound.
    Each conversation in flight has one request at a time, and a block holds its place
    until its slowest conversation ends, so the queue must be deeper than the batch:
    at 1.5x the engine ran 25-30 requests on a 32-seat batch for most of a job. The
    requests waiting beyond the batch cost nothing (no KV cache until scheduled) and,
    with priority scheduling, the longest conversations run first.
    A small job is cut into at least actors x tasks-in-flight blocks (when there are
    enough rows): Ray Data hands blocks to the actor on the blocks' own node (the
    driver's) until it holds its tasks-in-flight limit, so fewer blocks than that
    would all go to one engine and the others would sit idle and be released.
    """
    capacity = engine_capacity or cfg.max_num_seqs
    target = cfg.batch_size * ASYNC_BATCHES_PER_TASK
    in_flight = max(1, math.ceil(QUEUE_FACTOR * capacity / target))
    num_blocks = max(1, math.ceil(rows / target), min(rows, actors * in_flight))
    return {
        "block_rows": math.ceil(rows / num_blocks),  # at most, as Ray Data splits the rows
        "num_blocks": num_blocks,
        "tasks_in_flight_per_actor": in_flight,
    }
