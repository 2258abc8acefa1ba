"""The generation stage on Ray Data: an actor pool, one engine per actor.

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
from typing import Any

import pyarrow as pa

from m2l_ray.config import EngineConfig, JobConfig
from m2l_ray.engines.base import Engine, EngineDead
from m2l_ray.plan import PlannedConversation
from m2l_ray.schema import RAW_SCHEMA

log = logging.getLogger(__name__)

#: Ray Data runs this many async batches of one block concurrently (its default is 4).
ASYNC_BATCHES_PER_TASK = 4


def make_engine(job: JobConfig) -> Engine:
    """The engine a config names; both kinds serve the same Synthesizer."""
    if job.engine.kind == "vllm":
        from m2l_ray.engines.vllm_engine import VLLMEngine

        return VLLMEngine(job.engine, job.seed)
    if job.engine.kind == "openai":
        from m2l_ray.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(job)
    raise ValueError(f"unknown engine kind {job.engine.kind}")


class ConversationGenerator:
    """Ray Data UDF: owns one engine; turns planned rows into conversation rows."""

    def __init__(self, cfg: JobConfig, counter: Any = None) -> None:
        from m2l_ray.context import build_synthesizer

        self.engine = make_engine(cfg)
        self.synth = build_synthesizer(cfg, self.engine)
        self.counter = counter  # progress.LiveCounter actor handle, or None

    async def _run(self, p: PlannedConversation) -> dict[str, Any]:
        row = await self.synth.run(p)
        if self.counter is not None:  # fire-and-forget: progress only
            self.counter.add.remote(1, int(row["status"] != "ok"), int(row["completion_tokens"] or 0))
        return row

    async def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        planned = [
            PlannedConversation(**{**r, "task_evols": tuple(r["task_evols"])}) for r in rows
        ]
        try:
            results = await asyncio.gather(*(self._run(p) for p in planned))
        except EngineDead as e:
            # Retrying on a dead engine loops forever; dying lets Ray start a fresh actor
            # (bounded by engine restarts) and retry this block there.
            log.error("vLLM engine died (%s); exiting the actor so Ray replaces it", e)
            os._exit(1)
        return pa.Table.from_pylist(list(results), schema=RAW_SCHEMA)


def pool_settings(
    cfg: EngineConfig, rows: int, engine_capacity: int | None = None, actors: int = 1
) -> dict[str, Any]:
    """Block size and tasks in flight so that each engine sees ~1.5x its capacity in requests.

    Capacity: vLLM's max_num_seqs, or the openai engine's per-actor in-flight bound.
    A small job is cut into at least actors x tasks-in-flight blocks (when there are
    enough rows): Ray Data hands blocks to the actor on the blocks' own node (the
    driver's) until it holds its tasks-in-flight limit, so fewer blocks than that
    would all go to one engine and the others would sit idle and be released.
    """
    capacity = engine_capacity or cfg.max_num_seqs
    target = cfg.batch_size * ASYNC_BATCHES_PER_TASK
    in_flight = max(1, math.ceil(1.5 * capacity / target))
    num_blocks = max(1, math.ceil(rows / target), min(rows, actors * in_flight))
    return {
        "block_rows": math.ceil(rows / num_blocks),  # at most, as Ray Data splits the rows
        "num_blocks": num_blocks,
        "tasks_in_flight_per_actor": in_flight,
    }
