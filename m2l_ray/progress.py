"""Progress lines for long runs: done / total, tokens/s, ETA, at a steady interval.

Printed by the driver as results stream back, so they land in ``ray job logs``
as well as on a laptop's terminal.
"""

from __future__ import annotations

import time
from collections.abc import Callable


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

    def update(self, done: int = 0, failed: int = 0, tokens: int = 0, force: bool = False) -> None:
        self.done += done
        self.failed += failed
        self.tokens += tokens
        now = self.clock()
        if force or now - self.last >= self.interval:
            self.last = now
            self.emit(self.line())

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
