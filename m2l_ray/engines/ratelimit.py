"""Async pacing for requests to a remote model: request spacing and a token bucket.

Why these shapes:

* Requests per minute are enforced as *even spacing* (one request every 60/rpm s), not
  as a budget that may be spent in a burst. Providers enforce their per-minute limits
  over shorter windows than a minute (OpenAI documents quantised enforcement), so a
  full minute's budget sent at once can still draw 429s; even spacing never does.
* Tokens per minute are a token bucket holding about one second's worth. The size of
  a request is only known after the server answers, so a request reserves an estimate
  (prompt bytes / 4 + max_tokens, the same over-estimate providers reserve) and the
  difference is settled with ``settle`` once usage arrives. A request bigger than the
  bucket waits for a full bucket and leaves it in debt, so the long-run rate is exact
  whatever the request sizes.

Both are per process (per actor); job-wide limits are divided across actors by the
engine (see ``OpenAISettings.per_actor``). All state is touched only from one event
loop, so no locks beyond an ``asyncio.Lock`` for FIFO fairness are needed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class RequestSpacer:
    """At most ``per_minute`` requests per minute, evenly spaced, first-come first-served."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be > 0")
        self.interval = 60.0 / per_minute
        self._clock = clock
        self._next = 0.0

    async def acquire(self) -> None:
        """Reserve the next free slot and sleep until it; slots are handed out in call order."""
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


class TokenBucket:
    """``rate`` tokens per second, holding at most ``capacity``; debt is allowed."""

    def __init__(
        self, rate: float, capacity: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.capacity = max(1.0, capacity if capacity is not None else rate)
        self._clock = clock
        self._level = self.capacity
        self._stamp = clock()
        self._lock: asyncio.Lock | None = None

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    @property
    def level(self) -> float:
        self._refill()
        return self._level

    async def acquire(self, tokens: float) -> None:
        """Wait until ``min(tokens, capacity)`` are available, then take ``tokens``.

        Waiters queue on a lock so a large request is not starved by small ones.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            need = min(float(tokens), self.capacity)
            while True:
                self._refill()
                if self._level >= need:
                    self._level -= tokens
                    return
                await asyncio.sleep((need - self._level) / self.rate)

    def settle(self, reserved: float, used: float) -> None:
        """Give back (or take more of) what a finished request reserved."""
        self._refill()
        self._level = min(self.capacity, self._level + reserved - used)
