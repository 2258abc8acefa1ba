"""Progress of the generation stage as it happens, and the watchdog that reads it.

A block of conversations returns only when its last conversation is done, and the
first block also waits for the engines to load, so counting returned rows alone makes
a line sit at 0 for minutes on a slow machine and then jump. Instead every engine
actor keeps an ``EngineTally`` (finished requests, tokens generated so far, finished
conversations) and sends a snapshot of it to one ``LiveCounter`` actor about once a
second; the driver polls that counter without ever blocking on it.

From the same counts the driver tells a person: requests done out of those planned
(the ETA comes from the tokens those requests need at the token rate since the first
engine was ready, and is "?" until a request has finished), tokens per second, and which engines are up with
which dtype. The watchdog is the job's own replacement for Ray Data's "no progress"
timeout, which can't see inside a block: if no request finishes for
``engine.stall_seconds`` the stage fails with a message that says what to check.

Live counts are for display only (a block retried after an actor died is counted
again there); the summary is built from the returned rows, which are exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any


def fmt_seconds(s: float) -> str:
    s = int(max(0, s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


@dataclass
class EngineTally:
    """What one engine actor has done so far; absolute counts, so a lost or repeated
    snapshot never skews the sum."""

    conversations: int = 0
    failed: int = 0
    requests: int = 0  # finished requests, successful or not
    tokens: int = 0  # generated tokens, counted while they stream where the engine streams
    finished_tokens: int = 0  # generated tokens of finished requests only
    plan_delta: int = 0  # requests finished conversations made, minus those planned for them
    prefix_queries: int = 0  # prompt tokens the engine's prefix cache was asked for
    prefix_hits: int = 0  # of those, tokens it had cached

    def add(self, other: EngineTally) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class LiveSnapshot:
    tally: EngineTally = field(default_factory=EngineTally)
    engines: list[dict[str, Any]] = field(default_factory=list)  # one per engine ready


class LiveCounter:
    """Ray actor (``ray.remote(num_cpus=0)``): the latest tally of every engine actor.

    Engines call ``report`` and ``engine_ready`` fire-and-forget; the driver calls ``get``.
    """

    def __init__(self) -> None:
        self.tallies: dict[str, dict[str, int]] = {}
        self.engines: list[dict[str, Any]] = []

    def report(self, actor_id: str, tally: dict[str, int]) -> None:
        self.tallies[actor_id] = tally

    def engine_ready(self, info: dict[str, Any]) -> None:
        self.engines.append(info)

    def get(self) -> dict[str, Any]:
        total = EngineTally()
        for t in self.tallies.values():
            total.add(EngineTally(**t))
        return {"tally": total.to_dict(), "engines": list(self.engines)}


def live_poller(counter: object) -> Callable[[], LiveSnapshot | None]:
    """A poll of a LiveCounter handle that never blocks: one ``get`` in flight at a time,
    its answer taken when ready (None until the first answer)."""
    import ray

    state: dict[str, Any] = {"ref": None, "value": None}

    def poll() -> LiveSnapshot | None:
        if state["ref"] is None:
            state["ref"] = counter.get.remote()  # type: ignore[attr-defined]
        ready, _ = ray.wait([state["ref"]], timeout=0)
        if ready:
            raw = ray.get(ready[0])
            state["value"] = LiveSnapshot(EngineTally(**raw["tally"]), list(raw["engines"]))
            state["ref"] = counter.get.remote()  # type: ignore[attr-defined]
        return state["value"]

    return poll


class Progress:
    """The driver's view of the stage: counts, lines at a steady interval, stall time.

    ``observe`` takes the engines' live snapshot, ``returned`` the exact counts of rows
    that came back; every figure shown is the larger of the two (clamped to the plan).
    """

    def __init__(
        self,
        stage: str,
        conversations: int,
        planned_requests: int,
        interval: float = 10.0,
        emit: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
        engines_expected: int = 1,
    ) -> None:
        self.stage = stage
        self.total = conversations
        self.planned_requests = planned_requests
        self.interval = interval
        self.emit = emit
        self.clock = clock
        self.engines_expected = engines_expected
        self.start = clock()
        self.last_line = self.start
        self.ready_at: float | None = None  # when the first engine was up
        self.last_progress = self.start  # a finished request, an engine up, or a block back
        self.live = LiveSnapshot()
        self.ret = EngineTally()  # from returned rows: exact
        self.use_live = True
        self._engines_seen = 0

    # ------------------------------------------------------------ inputs

    def observe(self, snap: LiveSnapshot | None) -> None:
        if snap is None or not self.use_live:
            return
        first = snap.tally.requests > 0 and self.live.tally.requests == 0
        if snap.tally.requests > self.live.tally.requests:
            self.last_progress = self.clock()
        self.live = snap
        self._engine_lines(snap)
        if first:  # the first finished request: show it at once
            self.tick(force=True)

    def _engine_lines(self, snap: LiveSnapshot) -> None:
        for info in snap.engines[self._engines_seen:]:
            self._engines_seen += 1
            now = self.clock()
            self.last_progress = now
            if self.ready_at is None:
                self.ready_at = now
            self.emit(f"[engine] {self._engines_seen}/{self.engines_expected} ready"
                      + (f" on {info['node']}" if info.get("node") else "")
                      + (f" after {info['load_seconds']:.0f}s" if "load_seconds" in info else "")
                      + (f": {info['note']}" if info.get("note") else ""))

    def returned(self, conversations: int, failed: int, requests: int, tokens: int) -> None:
        """Rows that came back (exact; a unit seen twice after a retry is not passed here)."""
        self.ret.conversations += conversations
        self.ret.failed += failed
        self.ret.requests += requests
        self.ret.tokens += tokens
        self.ret.finished_tokens += tokens
        self.last_progress = self.clock()
        if self.ready_at is None:
            self.ready_at = self.start

    def drop_live(self) -> None:
        """From here on only returned rows count (the final, exact line)."""
        self.use_live = False
        self.live = LiveSnapshot(engines=self.live.engines)

    # ------------------------------------------------------------ figures

    def _figure(self, name: str) -> int:
        return max(getattr(self.ret, name), getattr(self.live.tally, name))

    @property
    def done(self) -> int:
        return min(self.total, self._figure("conversations"))

    @property
    def failed(self) -> int:
        return min(self.done, self._figure("failed"))

    @property
    def requests(self) -> int:
        return self._figure("requests")

    @property
    def tokens(self) -> int:
        return self._figure("tokens")

    def requests_expected(self) -> int:
        """Planned requests, corrected by what finished conversations really needed
        (an evolution retried with its fallback adds one; a failed turn ends a row early)."""
        return max(self.requests, self.planned_requests + self.live.tally.plan_delta)

    def working_seconds(self) -> float:
        """Seconds since the first engine was up: the time rates are measured over."""
        return max(1e-9, self.clock() - (self.ready_at if self.ready_at is not None else self.start))

    def tokens_per_second(self) -> float:
        return self.tokens / self.working_seconds()

    def eta_seconds(self) -> float | None:
        """Tokens still to generate over the token rate; None until a request has finished.

        Requests run many at once and finish in waves, so a rate of finished requests
        says little early on. Tokens stream steadily: the work left is the expected
        requests times the mean tokens of a finished request, less what has streamed.
        """
        t = self.live.tally if self.live.tally.requests else self.ret
        if t.requests == 0 or self.ready_at is None or self.tokens == 0:
            return None
        per_request = (t.finished_tokens or t.tokens) / t.requests
        left = max(0.0, self.requests_expected() * per_request - self.tokens)
        return left / self.tokens_per_second()

    def stalled_seconds(self) -> float:
        return self.clock() - self.last_progress

    # ------------------------------------------------------------ lines

    def tick(self, force: bool = False) -> None:
        now = self.clock()
        if force or now - self.last_line >= self.interval:
            self.last_line = now
            self.emit(self.line())

    def final_line(self) -> str:
        """The stage's last line, from the returned rows alone (exact)."""
        return (f"[{self.stage}] done: {self.done}/{self.total} conversations ({self.failed} failed), "
                f"{self.requests} requests, {self.tokens} tokens at {self.tokens_per_second():.0f} tok/s, "
                f"elapsed {fmt_seconds(self.clock() - self.start)}")

    def line(self) -> str:
        elapsed = fmt_seconds(self.clock() - self.start)
        if not self.use_live:
            return self.final_line()
        if self.ready_at is None:
            return (f"[{self.stage}] loading engines: {self._engines_seen}/{self.engines_expected} "
                    f"ready, 0/{self.total} conversations, elapsed {elapsed}")
        expected = self.requests_expected()
        pct = 100.0 * self.requests / expected if expected else 100.0
        eta = self.eta_seconds()
        return (
            f"[{self.stage}] {self.requests}/{expected} requests ({pct:.0f}%), "
            f"{self.done}/{self.total} conversations ({self.failed} failed), "
            f"{self.tokens} tokens at {self.tokens_per_second():.0f} tok/s, "
            f"elapsed {elapsed}, ETA {fmt_seconds(eta) if eta is not None else '?'}"
        )
