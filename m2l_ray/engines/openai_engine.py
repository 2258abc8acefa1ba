"""Engine ``openai``: any OpenAI-compatible chat-completions server (vLLM, SGLang, hosted APIs).

The synthesis logic is the same as with the in-process vLLM engine: one ``chat`` per
step, rows with the same schema and provenance. What differs is what a remote, often
paid, often shared server needs, one module per concern:

* ``openai_settings``: its ``engine:`` keys, the limits (split across actors) and prices;
* ``openai_http``: the body, one actor's limits on the wire, retries with backoff, and
  answers turned into a ``Completion`` or a ``RequestFailed`` row failure;
* ``openai_preflight``: on the driver before Ray fans out, a missing key variable, a
  rejected key, an unknown model or an unreachable server as one clear message;
* here, the engine: no paying twice. Finished completions are cached under the job's
  output by a hash of the request body (``request_cache``); identical requests in
  flight at once are sent once. ``EngineDead`` is never raised: a remote server that
  is down is not fixed by restarting our actor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from m2l_ray.config import JobConfig
from m2l_ray.engines.base import Completion, RequestFailed, StepParams
from m2l_ray.engines.openai_http import Transport, request_body
from m2l_ray.engines.openai_preflight import preflight
from m2l_ray.engines.openai_settings import (
    OpenAIEngineConfig,
    actor_count,
    in_flight_per_actor,
    openai_config,
    settings_of,
)
from m2l_ray.engines.registry import EngineSpec
from m2l_ray.engines.request_cache import RequestCache, request_key

log = logging.getLogger(__name__)

STATS_LOG_SECONDS = 300.0


class OpenAIEngine:
    """One per Ray actor; every conversation of the actor shares its limits and session."""

    kind = "openai"

    def __init__(self, job: JobConfig) -> None:
        from m2l_ray.io import StorageOptions, Store

        cfg = openai_config(job)
        self.model = cfg.model
        self.settings = cfg.openai
        self.extra = dict(cfg.extra)
        limits = self.settings.per_actor(actor_count(job), job.source)
        self.max_in_flight = limits[0]
        self.stats: dict[str, int] = {k: 0 for k in (
            "requests", "cache_hits", "cache_misses", "deduplicated", "sent", "retries",
            "http_429", "http_5xx", "timeouts", "connection_errors", "malformed", "failed",
            "prompt_tokens", "completion_tokens", "usage_missing", "cache_write_errors",
        )}
        self.http = Transport(f"{cfg.api_root()}/chat/completions", self.settings, limits,
                              cfg.api_key(), cfg.api_key_env, self.stats)
        self.cache: RequestCache | None = None
        if self.settings.cache:
            options = StorageOptions.from_dict(job.storage, job.source)
            uri = self.settings.cache_uri
            self.cache = (
                RequestCache(Store.open(uri, options), prefix="")
                if uri else RequestCache(Store.open(job.output.uri, options))
            )
        self._inflight: dict[str, asyncio.Task[Completion]] = {}
        self._last_stats_log = time.monotonic()

    @property
    def peak_in_flight(self) -> int:
        return self.http.peak_in_flight

    # ---- the Engine protocol

    def body(self, messages: Sequence[Mapping[str, str]], params: StepParams) -> dict[str, Any]:
        return request_body(self.model, messages, params, self.extra, self.settings.max_tokens_field)

    async def chat(
        self, messages: Sequence[dict[str, str]], params: StepParams, request_id: str
    ) -> Completion:
        if self.http.ensure():
            self._inflight = {}  # tasks of another loop
        self.stats["requests"] += 1
        self._maybe_log_stats()
        body = self.body(messages, params)
        key = request_key(body)
        task = self._inflight.get(key)
        if task is not None:
            # the same request is already on its way (or being read from the cache)
            self.stats["deduplicated"] += 1
            return await asyncio.shield(task)
        task = asyncio.ensure_future(self._cached_or_sent(key, body, request_id))
        self._inflight[key] = task
        task.add_done_callback(lambda _t, k=key: self._inflight.pop(k, None))
        return await asyncio.shield(task)

    async def _cached_or_sent(self, key: str, body: dict[str, Any], request_id: str) -> Completion:
        if self.cache is not None:
            hit = await self.cache.aget(key)
            if hit is not None:
                self.stats["cache_hits"] += 1
                return hit
            self.stats["cache_misses"] += 1
        try:
            c = await self.http.send(body, request_id)
        except RequestFailed:
            self.stats["failed"] += 1
            raise
        if self.cache is not None:
            try:
                await self.cache.aput(key, body, c)
            except Exception as e:  # noqa: BLE001 - a paid result is returned even if not cached
                self.stats["cache_write_errors"] += 1
                log.warning("request cache write failed (the completion is kept): %s", e)
        return c

    def _maybe_log_stats(self) -> None:
        now = time.monotonic()
        if now - self._last_stats_log >= STATS_LOG_SECONDS:
            self._last_stats_log = now
            log.info("openai engine: %s", json.dumps(self.stats, sort_keys=True))

    async def aclose(self) -> None:
        await self.http.aclose()

    def close(self) -> None:
        log.info("openai engine closing: %s", json.dumps(self.stats, sort_keys=True))
        self.http.close()


#: a remote server: its own config class, the server preflight, the HTTP bound in flight
#: per actor, actors on one CPU each, and the prices of engine.openai
SPEC = EngineSpec(
    kind="openai",
    build=OpenAIEngine,
    config=OpenAIEngineConfig,
    preflight=preflight,
    in_flight=in_flight_per_actor,
    remote=True,
    pricing=settings_of,
)
