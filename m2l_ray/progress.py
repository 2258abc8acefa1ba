"""Progress lines for long runs: done / total, tokens/s, ETA, at a steady interval.

Printed by the driver, so they land in ``ray job logs`` as well as on a laptop's
terminal. Results arrive in blocks, and the first block can take minutes (engine
start, model load): a heartbeat thread keeps the lines coming at the interval while
nothing arrives, so a silent log always means a stuck driver, never a slow block.
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
                self.update()

        t = threading.Thread(target=beat, name=f"progress-{self.stage}", daemon=True)
        t.start()
        try:
            yield self
        finally:
            stop.set()
            t.join()

    def line(self) -> str:
        elapsed = max(1e-9, self.clock() - self.start)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta_s = fmt_seconds(eta) if eta == eta else "?"
        return (
            f"[{self.stage}] {self.done}/{self.total} conversations ({pct:.0f}%), "
            f"{self.failed} failed, {self.tokens / elapsed:.0f} generated tok/s, "
            f"elapsed {fmt_seconds(elapsed)}, ETA {eta_s}"
        )

    def tokens_per_second(self) -> float:
        return self.tokens / max(1e-9, self.clock() - self.start)
