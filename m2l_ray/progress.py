"""Progress lines for long runs: done / total, tokens/s, ETA, at a steady interval.

Printed by the driver, so they land in ``ray job logs`` as well as on a laptop's
terminal. Results arrive in blocks, and the first block can take minutes (engine
start, model load): a heartbeat thread keeps the lines coming at the interval while
nothing arrives, so a silent log always means a stuck driver, never a slow block.

A block returns only when its last conversation is done, so counting returned rows
alone makes the count sit still for minutes and then jump. The engines also report
each finished conversation to a ``LiveCounter`` actor, which the heartbeat polls: the
lines show the larger of the two. The live count is for display only (a block retried
after an actor died is counted again there); the summary uses the returned rows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def fmt_seconds(s: float) -> str:
    s = int(max(0, s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


class Progress:
    def __init__(
        self,
        stage: str,
        total: int,
        interval: float = 10.0,
        emit: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stage = stage
        self.total = total
        self.interval = interval
        self.emit = emit
        self.clock = clock
        self.start = clock()
        self.last = self.start
        self.done = 0
        self.failed = 0
        self.tokens = 0
        self._lock = threading.Lock()  # the heartbeat thread and the result loop both report
        # (done, failed, tokens) from the engines, or None while unknown
        self.live: Callable[[], tuple[int, int, int] | None] | None = None
        self._live = (0, 0, 0)

    def update(self, done: int = 0, failed: int = 0, tokens: int = 0, force: bool = False) -> None:
        with self._lock:
            self.done += done
            self.failed += failed
            self.tokens += tokens
            now = self.clock()
            if not (force or now - self.last >= self.interval):
                return
            self.last = now
            line = self.line()
        self.emit(line)

    @contextmanager
    def heartbeat(self) -> Iterator[Progress]:
        """Emit a line every ``interval`` seconds for as long as the block runs."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(min(1.0, self.interval / 4)):
                if self.live is not None and self.clock() - self.last >= self.interval:
                    self.poll_live()
                self.update()

        t = threading.Thread(target=beat, name=f"progress-{self.stage}", daemon=True)
        t.start()
        try:
            yield self
        finally:
            stop.set()
            # bounded: a stopped job gets 3 s between SIGTERM and SIGKILL for a clean stop
            t.join(timeout=1.0)

    def poll_live(self) -> None:
        """Fetch the engines' live counts; a counter that can't answer is skipped."""
        try:
            live = self.live() if self.live is not None else None
        except Exception:  # noqa: BLE001 - display only: never let it stop the job
            return
        if live is not None:
            with self._lock:
                self._live = tuple(int(x) for x in live)  # type: ignore[assignment]

    def drop_live(self) -> None:
        """From here on, only returned rows count (the final, exact line)."""
        with self._lock:
            self.live, self._live = None, (0, 0, 0)

    def line(self) -> str:
        elapsed = max(1e-9, self.clock() - self.start)
        done = min(self.total, max(self.done, self._live[0]))
        failed = max(self.failed, min(self._live[1], done))
        tokens = max(self.tokens, self._live[2])
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        pct = 100.0 * done / self.total if self.total else 100.0
        eta_s = fmt_seconds(eta) if eta == eta else "?"
        return (
            f"[{self.stage}] {done}/{self.total} conversations ({pct:.0f}%), "
            f"{failed} failed, {tokens / elapsed:.0f} generated tok/s, "
            f"elapsed {fmt_seconds(elapsed)}, ETA {eta_s}"
        )

    def tokens_per_second(self) -> float:
        return self.tokens / max(1e-9, self.clock() - self.start)


class LiveCounter:
    """Ray actor (``ray.remote(num_cpus=0)``): conversations the engines have finished.

    Engines call ``add`` fire-and-forget per conversation; the driver's heartbeat
    calls ``get``.
    """

    def __init__(self) -> None:
        self.done = 0
        self.failed = 0
        self.tokens = 0

    def add(self, done: int, failed: int, tokens: int) -> None:
        self.done += done
        self.failed += failed
        self.tokens += tokens

    def get(self) -> tuple[int, int, int]:
        return self.done, self.failed, self.tokens


def live_poller(counter: object) -> Callable[[], tuple[int, int, int] | None]:
    """``Progress.live`` for a LiveCounter actor handle that never blocks the heartbeat:
    one ``get`` in flight at a time, its answer taken when ready (None until then)."""
    import ray

    state: dict[str, object] = {"ref": None, "value": None}

    def poll() -> tuple[int, int, int] | None:
        if state["ref"] is None:
            state["ref"] = counter.get.remote()  # type: ignore[attr-defined]
        ready, _ = ray.wait([state["ref"]], timeout=0)
        if ready:
            state["value"] = ray.get(ready[0])
            state["ref"] = counter.get.remote()  # type: ignore[attr-defined]
        return state["value"]  # type: ignore[return-value]

    return poll
