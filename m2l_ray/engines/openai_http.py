"""The openai engine's HTTP side: request bodies, one actor's limits, retries, answers.

What a remote, often paid, often shared server needs from a client:

* Politeness. Per actor: a bound on requests in flight (a semaphore), optional even
  request spacing (rpm) and a token bucket (tpm), each an actor's share of the job's
  limits (``OpenAISettings.per_actor``).
* Retries with exponential backoff and jitter on 429, 5xx, connection errors, timeouts
  and unparsable bodies. A ``Retry-After`` (or ``retry-after-ms``) header is honoured
  as a floor, and a 429 pauses the whole actor for that long, not just the request
  that drew it: the server is throttling the client, and every other request in
  flight would draw the same answer.
* Row failures, never actor deaths: a request that keeps failing, or an empty or
  malformed answer, raises ``RequestFailed`` with a reason. The key is never logged
  or put in a message.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import random
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from m2l_ray.engines.base import Completion, RequestFailed, StepParams
from m2l_ray.engines.openai_settings import OpenAISettings
from m2l_ray.engines.ratelimit import RequestSpacer, TokenBucket

log = logging.getLogger(__name__)

#: HTTP statuses worth another attempt (besides 429): the server may answer differently later.
RETRY_STATUSES = frozenset({408, 409, 425, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529})
#: A well-formed JSON body with the wrong shape is likely deterministic: retry it only this often.
MALFORMED_RETRIES = 2
_CONTEXT_WORDS = re.compile(
    r"context length|context window|maximum context|too many tokens|prompt is too long", re.I
)


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


def redact(text: str, key: str | None) -> str:
    return text.replace(key, "<redacted>") if key and len(key) >= 4 else text


def error_message(text: str) -> str:
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


def _header_safe(text: str) -> str:
    """Request ids go into a header (for server-side logs): ASCII, bounded."""
    return text.encode("ascii", "replace").decode("ascii")[:256]


class _Retry(Exception):
    """One attempt failed in a way another attempt may fix."""

    def __init__(self, reason: str, detail: str, retry_after: float | None = None,
                 malformed: bool = False) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after
        self.malformed = malformed


class Transport:
    """One actor's connection to the server: its session, its limits, retries and parsing.

    ``stats`` is the engine's counter dict; the transport adds what it sees on the wire.
    The session and the limiters belong to one event loop and are made inside it
    (``ensure``), as Ray Data may call an actor from a loop it starts later.
    """

    def __init__(self, url: str, settings: OpenAISettings, limits: tuple[int, float | None, float | None],
                 key: str | None, key_env: str | None, stats: dict[str, int]) -> None:
        self.url = url
        self.settings = settings
        self.max_in_flight, self.rpm, self.tpm = limits
        self._key = key
        self.key_env = key_env
        self.stats = stats
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: Any = None
        self._slots: asyncio.Semaphore | None = None
        self._spacer: RequestSpacer | None = None
        self._bucket: TokenBucket | None = None
        self._pause_until = 0.0
        self._in_flight_now = 0
        self.peak_in_flight = 0

    def ensure(self) -> bool:
        """Session and limiters on the running loop; True when they were (re)made."""
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._session is not None and not self._session.closed:
            return False
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
        return True

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            h["Authorization"] = f"Bearer {self._key}"
        return h

    async def send(self, body: dict[str, Any], request_id: str) -> Completion:
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
                detail = redact(f"{type(e).__name__}: {e}", self._key)[:300]
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
            raise _Retry("rate_limited", f"HTTP 429: {error_message(text)}", _retry_after(headers))
        if status >= 500 or status in RETRY_STATUSES:
            self.stats["http_5xx"] += status >= 500
            ra = _retry_after(headers) if status in (503, 529) else None
            raise _Retry("http_error", f"HTTP {status}: {error_message(text)}", ra)
        if status in (401, 403):
            raise RequestFailed(
                "auth_error", f"HTTP {status}: the server rejected the API key"
                + (f" from ${self.key_env}" if self.key_env else " (no engine.api_key_env set)")
            )
        if status >= 400:
            msg = redact(error_message(text), self._key)
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

    # ---- closing: Ray Data never calls close() on a UDF's engine

    def __del__(self) -> None:
        """Drop the sockets quietly at exit (aiohttp otherwise warns about an unclosed
        session in every actor's log)."""
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
