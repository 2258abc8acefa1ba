"""A small OpenAI-compatible HTTP server that misbehaves on a schedule, for engine tests.

It answers ``POST /v1/chat/completions`` and ``GET /v1/models`` on 127.0.0.1 (a free
port), in a thread with its own event loop, and records what a real provider's logs
would show: every request's arrival time, its key (the last message's content), the
peak number of requests in flight, and the status it got. A ``plan`` function decides
per request what to do: answer, 429 with Retry-After, 5xx, hang past the client's
timeout, send a body that is not JSON or has no text.

With ``upstream`` set it is a counting (and optionally faulty) proxy in front of a
real server such as ``vllm serve``: requests the plan lets through are forwarded.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web


@dataclass(frozen=True)
class Act:
    """What the server does with one request."""

    status: int = 200
    delay: float = 0.0  # seconds before answering (counts as in flight)
    retry_after: float | None = None  # Retry-After header (seconds) on errors
    raw: bytes | None = None  # a body sent as is (malformed responses)
    content: str | None = None  # the reply text (default: an echo of the key)
    usage: tuple[int, int] | None = None  # (prompt, completion) tokens (default: word counts)
    no_usage: bool = False  # leave the usage object out, as some servers do


OK = Act()


def e429(retry_after: float | None = 1.0) -> Act:
    return Act(429, retry_after=retry_after, raw=b'{"error": {"message": "Rate limit reached", "code": 429}}')


def e500() -> Act:
    return Act(500, raw=b'{"error": {"message": "internal error"}}')


def malformed() -> Act:
    return Act(200, raw=b'{"id": "x", "choices": [{"message": {"content": "tru')


def empty() -> Act:
    return Act(200, content="")


def slow(seconds: float) -> Act:
    return Act(200, delay=seconds)


@dataclass(frozen=True)
class Seen:
    t: float  # time.monotonic() on arrival
    key: str
    attempt: int  # 0 for the first request with this key
    status: int


Plan = Callable[[int, str, int], Act]  # (global index, key, attempt for this key) -> Act


class FlakyServer:
    def __init__(
        self,
        plan: Plan | None = None,
        models: Sequence[str] = ("test-model",),
        api_key: str | None = None,
        upstream: str | None = None,
        key_header: str | None = None,
        reply: Callable[[str, dict[str, Any]], str] | None = None,
    ) -> None:
        self.plan: Plan = plan or (lambda n, key, attempt: OK)
        self.models = list(models)
        self.api_key = api_key
        self.upstream = upstream.rstrip("/") if upstream else None
        self.key_header = key_header  # key requests by this header instead of the last message
        self.reply = reply  # (key, body) -> reply text, instead of an echo
        self.seen: list[Seen] = []
        self.bodies: list[dict[str, Any]] = []
        self.attempts: dict[str, int] = defaultdict(int)
        self.in_flight = 0
        self.peak_in_flight = 0
        self.model_list_requests = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._session: ClientSession | None = None
        self.port = 0

    # ---- lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FlakyServer:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._serve())
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="flaky-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("flaky server did not start")
        return self

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        # handlers still sleeping on a planned hang are cancelled after 2 s, not awaited
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        if self.upstream:
            self._session = ClientSession(timeout=ClientTimeout(total=600))

    def stop(self) -> None:
        if self._loop is None:
            return

        async def down() -> None:
            if self._session is not None:
                await self._session.close()
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(down(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FlakyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- what the tests read

    @property
    def requests(self) -> int:
        return len(self.seen)

    def arrivals(self, key: str) -> list[float]:
        return [s.t for s in self.seen if s.key == key]

    def reset(self) -> None:
        with self._lock:
            self.seen.clear()
            self.bodies.clear()
            self.attempts.clear()
            self.peak_in_flight = 0

    # ---- handlers

    def _authorized(self, request: web.Request) -> bool:
        return self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _models(self, request: web.Request) -> web.Response:
        self.model_list_requests += 1
        if not self._authorized(request):
            return web.json_response({"error": {"message": "Incorrect API key provided"}}, status=401)
        if self.upstream:
            assert self._session is not None
            async with self._session.get(f"{self.upstream}/models") as r:
                return web.Response(status=r.status, body=await r.read(), content_type="application/json")
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "owned_by": "flaky"} for m in self.models]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw)
        key = (request.headers.get(self.key_header, "") if self.key_header
               else body["messages"][-1]["content"])
        with self._lock:
            n = len(self.seen)
            attempt = self.attempts[key]
            self.attempts[key] += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            t = time.monotonic()
        try:
            if not self._authorized(request):
                act = Act(401, raw=b'{"error": {"message": "Incorrect API key provided"}}')
            else:
                act = self.plan(n, key, attempt)
            with self._lock:
                self.seen.append(Seen(t, key, attempt, act.status))
                self.bodies.append(body)
            if act.delay:
                await asyncio.sleep(act.delay)
            headers = {}
            if act.retry_after is not None:
                headers["Retry-After"] = f"{act.retry_after:g}"
            if act.raw is not None:
                return web.Response(status=act.status, body=act.raw, headers=headers,
                                    content_type="application/json")
            if self.upstream and act.status == 200 and act.content is None:
                assert self._session is not None
                async with self._session.post(f"{self.upstream}/chat/completions", data=raw,
                                              headers={"Content-Type": "application/json"}) as r:
                    return web.Response(status=r.status, body=await r.read(),
                                        content_type="application/json")
            if act.content is not None:
                text = act.content
            else:
                text = self.reply(key, body) if self.reply else f"echo: {key}"
            words = sum(len(m["content"].split()) for m in body["messages"])
            prompt, completion = act.usage or (words, len(text.split()))
            limit = body.get("max_tokens") or body.get("max_completion_tokens") or 10**9
            answer: dict[str, Any] = {
                "id": f"chatcmpl-{n}", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "length" if completion >= limit else "stop"}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion},
            }
            if act.no_usage:
                del answer["usage"]
            return web.json_response(answer, status=act.status, headers=headers)
        finally:
            with self._lock:
                self.in_flight -= 1
