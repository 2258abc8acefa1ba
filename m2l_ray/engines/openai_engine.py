"""Engine ``openai``: any OpenAI-compatible chat-completions server (vLLM, SGLang, hosted APIs).

The synthesis logic is the same as with the in-process vLLM engine: one ``chat`` per
step, rows with the same schema and provenance. What differs is what a remote, often
paid, often shared server needs:

* Politeness. Per actor: a bound on requests in flight (a semaphore), optional even
  request spacing (rpm) and a token bucket (tpm). Job-wide limits are divided across
  the job's actors statically (``OpenAISettings.per_actor``): no extra round trip per
  request, no single limiter actor to lose, no permits leaked by a dead actor; the
  price is that an idle actor's share is not lent to a busy one (only at a job's tail).
* Retries with exponential backoff and jitter on 429, 5xx, connection errors, timeouts
  and unparsable bodies. A ``Retry-After`` (or ``retry-after-ms``) header is honoured
  as a floor, and a 429 pauses the whole actor for that long, not just the request
  that drew it: the server is throttling the client, and every other request in
  flight would draw the same answer.
* No paying twice: finished completions are cached under the job's output by a hash
  of the request body (``request_cache``); identical requests in flight at once are
  sent once.
* Row failures, never actor deaths: a request that keeps failing, or an empty or
  malformed answer, raises ``RequestFailed`` with a reason; the synthesizer records it
  on the row and the job goes on. ``EngineDead`` is never raised: a remote server
  that is down is not fixed by restarting our actor.
* Fail fast: ``preflight`` runs on the driver before Ray fans out and turns a missing
  key variable, a rejected key, an unknown model or an unreachable server into one
  clear message. The key itself is never logged or put in a message.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from m2l_ray.config import EngineConfig, JobConfig
from m2l_ray.engines.base import Completion, RequestFailed, StepParams
from m2l_ray.engines.ratelimit import RequestSpacer, TokenBucket
from m2l_ray.engines.request_cache import RequestCache, request_key
from m2l_ray.errors import ConfigError, M2LError
from m2l_ray.storage import StorageOptions, Store

log = logging.getLogger(__name__)

#: HTTP statuses worth another attempt (besides 429): the server may answer differently later.
RETRY_STATUSES = frozenset({408, 409, 425, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529})
#: Body fields the engine owns; setting them in engine.extra would break the protocol.
RESERVED_EXTRA = frozenset({"model", "messages", "stream", "n", "api_key", "key", "token"})
#: A well-formed JSON body with the wrong shape is likely deterministic: retry it only this often.
MALFORMED_RETRIES = 2
_CONTEXT_WORDS = re.compile(
    r"context length|context window|maximum context|too many tokens|prompt is too long", re.I
)
STATS_LOG_SECONDS = 300.0


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class OpenAISettings:
    """``engine.openai`` in the job config: limits, retries, cache, prices."""

    max_in_flight: int = 32  # per actor
    job_max_in_flight: int | None = None  # across the job, divided across actors
    requests_per_minute: float | None = None  # across the job
    tokens_per_minute: float | None = None  # across the job (prompt + completion)
    timeout_seconds: float = 60.0  # per request, whole exchange
    max_retries: int = 6  # attempts after the first
    backoff_base: float = 1.0  # seconds, doubled per retry, jittered
    backoff_max: float = 60.0
    max_retry_after: float = 600.0  # a longer Retry-After fails the request instead of waiting
    cache: bool = True
    cache_uri: str | None = None  # default: <output.uri>/cache/requests
    price_per_1k_prompt_tokens: float | None = None
    price_per_1k_completion_tokens: float | None = None
    max_tokens_field: str = "max_tokens"  # or max_completion_tokens (newer OpenAI models)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, source: str | None = None) -> OpenAISettings:
        """Validate the raw mapping; every problem names ``engine.openai.<key>``."""
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ConfigError("engine.openai", "must be a mapping", source)
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for raw_key, v in d.items():
            k = str(raw_key)
            name = f"engine.openai.{k}"
            if k not in known:
                raise ConfigError(name, f"unknown key (allowed: {', '.join(sorted(known))})", source)
            if v is None:
                continue
            if k in ("max_in_flight", "max_retries", "job_max_in_flight"):
                if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k == "max_retries" else 1):
                    low = 0 if k == "max_retries" else 1
                    raise ConfigError(name, f"must be an integer >= {low}, got {v!r}", source)
            elif k == "cache":
                if not isinstance(v, bool):
                    raise ConfigError(name, f"must be true or false, got {v!r}", source)
            elif k == "cache_uri":
                if not isinstance(v, str) or not v.strip():
                    raise ConfigError(name, "must be a non-empty local path or s3:// URI", source)
            elif k == "max_tokens_field":
                if v not in ("max_tokens", "max_completion_tokens"):
                    raise ConfigError(name, "must be max_tokens or max_completion_tokens", source)
            else:
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise ConfigError(name, f"must be a number, got {v!r}", source)
                strict = k in ("requests_per_minute", "tokens_per_minute", "timeout_seconds")
                if v < 0 or (strict and v == 0):
                    raise ConfigError(name, f"must be {'> 0' if strict else '>= 0'}, got {v}", source)
                v = float(v)
            values[k] = v
        s = cls(**values)
        if s.backoff_max < s.backoff_base:
            raise ConfigError("engine.openai.backoff_max", "must be >= backoff_base", source)
        return s

    def per_actor(self, actors: int, source: str | None = None) -> tuple[int, float | None, float | None]:
        """(in-flight, rpm, tpm) for one of ``actors`` actors; job-wide bounds split evenly.

        Floor division for requests in flight keeps the sum across actors within the job
        bound; a bound smaller than the number of actors can't be honoured and is an error.
        """
        in_flight = self.max_in_flight
        if self.job_max_in_flight is not None:
            if self.job_max_in_flight < actors:
                raise ConfigError(
                    "engine.openai.job_max_in_flight",
                    f"{self.job_max_in_flight} is fewer than the {actors} engine actors; "
                    "raise it or lower engine.num_actors",
                    source,
                )
            in_flight = min(in_flight, self.job_max_in_flight // actors)
        rpm = self.requests_per_minute / actors if self.requests_per_minute else None
        tpm = self.tokens_per_minute / actors if self.tokens_per_minute else None
        return in_flight, rpm, tpm

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Price of the tokens, or None when no price is configured."""
        if self.price_per_1k_prompt_tokens is None and self.price_per_1k_completion_tokens is None:
            return None
        return (
            prompt_tokens / 1000 * (self.price_per_1k_prompt_tokens or 0.0)
            + completion_tokens / 1000 * (self.price_per_1k_completion_tokens or 0.0)
        )


def actor_count(job: JobConfig) -> int:
    """Engine actors of an ``openai`` job: ``engine.num_actors`` or 1 (no GPUs involved).

    The pipeline must size its actor pool with this too: the job-wide limits are split
    by this number.
    """
    return job.engine.num_actors or 1


def check_extra(extra: Mapping[str, Any], source: str | None = None) -> None:
    for k in extra:
        if k in RESERVED_EXTRA:
            raise ConfigError(
                f"engine.extra.{k}",
                "set by the engine; it can't be an extra request field",
                source,
            )


def api_key(cfg: EngineConfig) -> str | None:
    """The key from the environment variable the config names; None when none is named."""
    if not cfg.api_key_env:
        return None
    value = os.environ.get(cfg.api_key_env, "")
    if not value.strip():
        raise M2LError(
            f"engine.api_key_env names ${cfg.api_key_env}, but that environment variable is "
            "unset or empty; export it (on the driver and on every Ray node, e.g. via the "
            "job's runtime_env env_vars) or remove engine.api_key_env for a server without auth"
        )
    return value.strip()


def _redact(text: str, key: str | None) -> str:
    return text.replace(key, "<redacted>") if key and len(key) >= 4 else text


def base(cfg: EngineConfig) -> str:
    return (cfg.base_url or "").rstrip("/")


# ---------------------------------------------------------------- engine


def request_body(
    model: str, messages: Sequence[Mapping[str, str]], params: StepParams,
    extra: Mapping[str, Any], max_tokens_field: str = "max_tokens",
) -> dict[str, Any]:
    """The chat-completions body for one step.

    ``repetition_penalty`` is a vLLM/SGLang extension, sent only when it does something,
    so hosted APIs that reject unknown fields still work with the default 1.0.
    ``engine.extra`` is applied last: its values win, and a null value removes a field
    (``seed: null`` for servers that refuse seeds).
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        max_tokens_field: params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
    }
    if params.seed is not None:
        body["seed"] = params.seed
    if params.repetition_penalty != 1.0:
        body["repetition_penalty"] = params.repetition_penalty
    for k, v in extra.items():
        if v is None:
            body.pop(k, None)
        else:
            body[k] = v
    return body


def _estimate_tokens(body: Mapping[str, Any]) -> int:
    """Over-estimate for the token bucket: UTF-8 bytes / 4 of the messages + the output budget."""
    text = sum(len(m["content"].encode("utf-8")) + 8 for m in body["messages"])
    out = body.get("max_tokens") or body.get("max_completion_tokens") or 0
    return math.ceil(text / 4) + int(out)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks us to wait: retry-after-ms, Retry-After seconds or HTTP date."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Retry(Exception):
    """One attempt failed in a way another attempt may fix."""

    def __init__(self, reason: str, detail: str, retry_after: float | None = None,
                 malformed: bool = False) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after
        self.malformed = malformed


class OpenAIEngine:
    """One per Ray actor; every conversation of the actor shares its limits and session."""

    kind = "openai"

    def __init__(self, job: JobConfig) -> None:
        cfg = job.engine
        self.model = cfg.model
        self.base_url = base(cfg)
        if not self.base_url:
            raise ConfigError("engine.base_url", "required when engine.kind is openai", job.source)
        self.url = f"{self.base_url}/chat/completions"
        self.settings = OpenAISettings.from_dict(cfg.openai, job.source)
        check_extra(cfg.extra, job.source)
        self.extra = dict(cfg.extra)
        self.key_env = cfg.api_key_env
        self._key = api_key(cfg)
        self.max_in_flight, self.rpm, self.tpm = self.settings.per_actor(actor_count(job), job.source)
        self.cache: RequestCache | None = None
        if self.settings.cache:
            options = StorageOptions.from_dict(job.storage, job.source)
            uri = self.settings.cache_uri
            self.cache = (
                RequestCache(Store.open(uri, options), prefix="")
                if uri else RequestCache(Store.open(job.output.uri, options))
            )
        self.stats: dict[str, int] = {k: 0 for k in (
            "requests", "cache_hits", "cache_misses", "deduplicated", "sent", "retries",
            "http_429", "http_5xx", "timeouts", "connection_errors", "malformed", "failed",
            "prompt_tokens", "completion_tokens", "usage_missing", "cache_write_errors",
        )}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: Any = None
        self._slots: asyncio.Semaphore | None = None
        self._spacer: RequestSpacer | None = None
        self._bucket: TokenBucket | None = None
        self._inflight: dict[str, asyncio.Task[Completion]] = {}
        self._pause_until = 0.0
        self._in_flight_now = 0
        self.peak_in_flight = 0
        self._last_stats_log = time.monotonic()

    # ---- loop-bound state, created lazily inside the running loop

    def _ensure(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._session is not None and not self._session.closed:
            return
        import aiohttp

        self._loop = loop
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.max_in_flight, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds),
            headers=self._headers(),
        )
        self._slots = asyncio.Semaphore(self.max_in_flight)
        self._spacer = RequestSpacer(self.rpm) if self.rpm else None
        # about one second's worth: smooth pacing, exact long-run rate (see ratelimit)
        self._bucket = TokenBucket(self.tpm / 60.0, self.tpm / 60.0) if self.tpm else None
        self._inflight = {}

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            h["Authorization"] = f"Bearer {self._key}"
        return h

    # ---- the Engine protocol

    def body(self, messages: Sequence[Mapping[str, str]], params: StepParams) -> dict[str, Any]:
        return request_body(self.model, messages, params, self.extra, self.settings.max_tokens_field)

    async def chat(
        self, messages: Sequence[dict[str, str]], params: StepParams, request_id: str
    ) -> Completion:
        self._ensure()
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
            c = await self._send(body, request_id)
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

    async def _send(self, body: dict[str, Any], request_id: str) -> Completion:
        """Send with retries; RequestFailed once they are exhausted or can't help."""
        s = self.settings
        attempt = 0
        malformed = 0
        while True:
            try:
                return await self._attempt(body, request_id)
            except _Retry as r:
                attempt += 1
                malformed += r.malformed
                if attempt > s.max_retries or malformed > MALFORMED_RETRIES:
                    raise RequestFailed(r.reason, f"{r.detail} (after {attempt} attempt(s))") from None
                if r.retry_after is not None and r.retry_after > s.max_retry_after:
                    raise RequestFailed(
                        r.reason, f"{r.detail}; server asked to wait {r.retry_after:.0f}s, more "
                        f"than engine.openai.max_retry_after={s.max_retry_after:.0f}"
                    ) from None
                step = min(s.backoff_max, s.backoff_base * 2 ** (attempt - 1))
                delay = random.uniform(step / 2, step)
                if r.retry_after is not None:
                    delay = max(delay, r.retry_after)
                if r.reason == "rate_limited":
                    # throttling is about this client: every request of the actor waits
                    self._pause_until = max(self._pause_until, time.monotonic() + delay)
                self.stats["retries"] += 1
                log.debug("%s: %s, retry %d in %.2fs", request_id, r.detail, attempt, delay)
                await asyncio.sleep(delay)

    async def _attempt(self, body: dict[str, Any], request_id: str) -> Completion:
        import aiohttp

        assert self._slots is not None
        async with self._slots:
            while (wait := self._pause_until - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            if self._spacer is not None:
                await self._spacer.acquire()
            reserved = 0
            if self._bucket is not None:
                reserved = _estimate_tokens(body)
                await self._bucket.acquire(reserved)
            self.stats["sent"] += 1
            self._in_flight_now += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight_now)
            try:
                async with self._session.post(
                    self.url, json=body, headers={"X-Client-Request-Id": _header_safe(request_id)}
                ) as resp:
                    status = resp.status
                    headers = {k.lower(): v for k, v in resp.headers.items()}
                    raw = await resp.read()
            except TimeoutError:
                self.stats["timeouts"] += 1
                if self._bucket is not None:
                    self._bucket.settle(reserved, reserved)
                limit = self.settings.timeout_seconds
                raise _Retry("timeout", f"no complete answer within {limit:g}s") from None
            except aiohttp.ClientError as e:
                self.stats["connection_errors"] += 1
                if self._bucket is not None:
                    self._bucket.settle(reserved, 0)
                detail = _redact(f"{type(e).__name__}: {e}", self._key)[:300]
                raise _Retry("connection_error", detail) from None
            finally:
                self._in_flight_now -= 1
        c = self._parse(status, headers, raw, body)
        if self._bucket is not None:
            self._bucket.settle(reserved, c.prompt_tokens + c.completion_tokens)
        self.stats["prompt_tokens"] += c.prompt_tokens
        self.stats["completion_tokens"] += c.completion_tokens
        return c

    def _parse(
        self, status: int, headers: Mapping[str, str], raw: bytes, body: Mapping[str, Any]
    ) -> Completion:
        text = raw.decode("utf-8", errors="replace")
        if status == 429:
            self.stats["http_429"] += 1
            raise _Retry("rate_limited", f"HTTP 429: {_error_message(text)}", _retry_after(headers))
        if status >= 500 or status in RETRY_STATUSES:
            self.stats["http_5xx"] += status >= 500
            ra = _retry_after(headers) if status in (503, 529) else None
            raise _Retry("http_error", f"HTTP {status}: {_error_message(text)}", ra)
        if status in (401, 403):
            raise RequestFailed(
                "auth_error", f"HTTP {status}: the server rejected the API key"
                + (f" from ${self.key_env}" if self.key_env else " (no engine.api_key_env set)")
            )
        if status >= 400:
            msg = _redact(_error_message(text), self._key)
            too_long = status in (400, 413, 422) and _CONTEXT_WORDS.search(msg)
            reason = "prompt_too_long" if too_long else "http_error"
            raise RequestFailed(reason, f"HTTP {status}: {msg}")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            self.stats["malformed"] += 1
            raise _Retry("malformed_response", f"not JSON ({e}): {text[:120]!r}") from None
        try:
            choice = data["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            self.stats["malformed"] += 1
            raise _Retry("malformed_response", f"no choices[0].message in {text[:160]!r}",
                         malformed=True) from None
        content = message.get("content") if isinstance(message, Mapping) else None
        if content is not None and not isinstance(content, str):
            self.stats["malformed"] += 1
            raise _Retry("malformed_response", f"content is {type(content).__name__}", malformed=True)
        if not content or not content.strip():
            refusal = message.get("refusal") if isinstance(message, Mapping) else None
            if refusal:
                raise RequestFailed("refusal", str(refusal)[:300])
            raise RequestFailed(
                "empty_response", f"no text (finish_reason {choice.get('finish_reason')!r})"
            )
        usage = data.get("usage") if isinstance(data.get("usage"), Mapping) else {}
        try:
            prompt_tokens = int(usage["prompt_tokens"])
            completion_tokens = int(usage["completion_tokens"])
        except (KeyError, TypeError, ValueError):
            # servers that omit usage: an estimate (UTF-8 bytes / 4) beats a silent zero
            # in the cost report; stats["usage_missing"] says how often it was needed
            self.stats["usage_missing"] += 1
            prompt_tokens = math.ceil(sum(len(m["content"].encode("utf-8")) for m in body["messages"]) / 4)
            completion_tokens = math.ceil(len(content.encode("utf-8")) / 4)
        return Completion(content, prompt_tokens, completion_tokens, choice.get("finish_reason") or "stop")

    def _maybe_log_stats(self) -> None:
        now = time.monotonic()
        if now - self._last_stats_log >= STATS_LOG_SECONDS:
            self._last_stats_log = now
            log.info("openai engine: %s", json.dumps(self.stats, sort_keys=True))

    def __del__(self) -> None:
        """Ray Data never calls close() on a UDF's engine; drop the sockets quietly at exit
        (aiohttp otherwise warns about an unclosed session in every actor's log)."""
        session = getattr(self, "_session", None)
        if session is None or session.closed:
            return
        try:
            loop = self._loop
            if loop is not None and loop.is_running() and not loop.is_closed():
                asyncio.run_coroutine_threadsafe(session.close(), loop)
            else:
                for proto in list(getattr(session.connector, "_conns", {}).values()):
                    for handler, _ in proto:
                        handler.close()
                session.detach()  # closed: ClientSession.__del__ has nothing to report
        except Exception:  # noqa: BLE001 - best effort during interpreter shutdown
            pass

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def close(self) -> None:
        """Close the HTTP session on its own loop, wherever close() is called from."""
        log.info("openai engine closing: %s", json.dumps(self.stats, sort_keys=True))
        session, loop = self._session, self._loop
        if session is None or session.closed or loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(self.aclose())
        elif loop.is_running():
            asyncio.run_coroutine_threadsafe(self.aclose(), loop).result(timeout=10)
        else:
            loop.run_until_complete(self.aclose())


def _header_safe(text: str) -> str:
    """Request ids go into a header (for server-side logs): ASCII, bounded."""
    return text.encode("ascii", "replace").decode("ascii")[:256]


def in_flight_per_actor(job: JobConfig) -> int:
    """Requests one actor keeps in flight: what the pipeline should size its blocks by
    (in place of engine.max_num_seqs, which only means something to an in-process vLLM)."""
    settings = OpenAISettings.from_dict(job.engine.openai, job.source)
    return settings.per_actor(actor_count(job), job.source)[0]


def _error_message(text: str) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the start of the body."""
    try:
        data = json.loads(text)
        err = data.get("error") if isinstance(data, Mapping) else None
        if isinstance(err, Mapping) and err.get("message"):
            return str(err["message"])[:300]
        if isinstance(err, str):
            return err[:300]
        if isinstance(data, Mapping) and data.get("message"):
            return str(data["message"])[:300]
    except (json.JSONDecodeError, AttributeError):
        pass
    return text.strip()[:200] or "(empty body)"


# ---------------------------------------------------------------- driver side


def preflight(job: JobConfig, timeout: float = 15.0) -> None:
    """Before Ray fans out: settings, key variable, key, model and server, checked once.

    GET {base_url}/models is free on every OpenAI-compatible server we know and needs the
    same key as a completion, so it tells a rejected key (401/403) and an unknown model
    apart from an unreachable server, without spending a token.
    """
    import httpx

    cfg = job.engine
    settings = OpenAISettings.from_dict(cfg.openai, job.source)
    settings.per_actor(actor_count(job), job.source)
    check_extra(cfg.extra, job.source)
    url = base(cfg)
    if not url.startswith(("http://", "https://")):
        raise ConfigError("engine.base_url", f"must start with http:// or https://, got {url!r}", job.source)
    key = api_key(cfg)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        resp = httpx.get(f"{url}/models", headers=headers, timeout=timeout)
    except httpx.HTTPError as e:
        raise M2LError(
            f"cannot reach the OpenAI-compatible server at {url}: "
            f"{_redact(f'{type(e).__name__}: {e}', key)}; check engine.base_url and that it is up"
        ) from None
    if resp.status_code in (401, 403):
        if key:
            raise M2LError(
                f"invalid API key (from ${cfg.api_key_env}): {url}/models answered HTTP "
                f"{resp.status_code} ({_redact(_error_message(resp.text), key)})"
            )
        raise M2LError(
            f"{url} requires an API key (HTTP {resp.status_code}); put it in an environment "
            "variable and name that variable in engine.api_key_env"
        )
    if resp.status_code == 404:
        hint = "" if url.endswith("/v1") else f" (did you mean {url}/v1?)"
        raise M2LError(f"{url}/models not found (HTTP 404): engine.base_url must be the API root{hint}")
    if resp.status_code >= 400:
        raise M2LError(
            f"{url}/models answered HTTP {resp.status_code}: {_redact(_error_message(resp.text), key)}"
        )
    try:
        models = [str(m["id"]) for m in resp.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise M2LError(f"{url}/models did not return an OpenAI model list: {resp.text[:200]!r}") from None
    if cfg.model not in models:
        shown = ", ".join(sorted(models)[:30]) + (" ..." if len(models) > 30 else "")
        raise ConfigError(
            "engine.model",
            f"'{cfg.model}' is not served at {url}; available: {shown or '(none)'}",
            job.source,
        )


