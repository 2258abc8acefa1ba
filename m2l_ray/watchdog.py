"""The generation stage's watchdog: progress and stall limits kept by the driver's thread.

Ray Data's own no-progress timeout counts finished blocks, and one block of long
multi-turn conversations on a slow CPU can legitimately run longer than it; the
stage switches it off and watches finished requests instead (``engine.stall_seconds``,
and ``engine.start_seconds`` while no engine is up yet).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from m2l_ray.errors import M2LError
from m2l_ray.progress import Progress

_END = object()


def watched_blocks(
    out: Any, prog: Progress, poll: Callable[[], Any], stall_seconds: float,
    start_seconds: float | None = None, explain: Callable[[BaseException], Exception | None] = lambda e: None,
) -> Iterator[pa.Table]:
    """Finished blocks of ``out``, while the calling thread keeps progress and the watchdog.

    A daemon thread iterates Ray Data (which blocks for as long as a block takes) and
    hands blocks over through a queue; this generator wakes every half second to poll
    the engines' counts, print a line when one is due, and fail the stage when no
    engine is up ``start_seconds`` after the start (loading a big model takes minutes,
    so it has its own limit), or when no request has finished for ``stall_seconds``.
    ``explain`` turns a failure Ray Data raised into the stage's own error, if it knows it.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=4)

    def read() -> None:
        try:
            # prefetch_batches=0: a finished block reaches the loop (and raw/) as soon as it exists
            for b in out.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
                q.put(b)
            q.put(_END)
        except BaseException as e:  # noqa: BLE001 - re-raised in the driver's thread
            q.put(e)

    threading.Thread(target=read, name="generate-reader", daemon=True).start()
    while True:
        try:
            item = q.get(timeout=0.5)
        except queue.Empty:
            item = None
        if item is _END:
            return
        if isinstance(item, BaseException):
            known = explain(item)
            if known is not None:
                _abandon()
                raise known from item
            raise item
        if item is not None:
            yield item
        try:
            prog.observe(poll())
        except Exception:  # noqa: BLE001 - display only: a counter that can't answer is skipped
            pass
        prog.tick()
        limit = stall_seconds if prog.ready_at is not None else (start_seconds or stall_seconds)
        if prog.stalled_seconds() > limit:
            _abandon()
            raise M2LError(stall_message(prog, limit))


def _abandon() -> None:
    """The stage is abandoned with its own one-line error: Ray Data's executor thread would
    log a traceback as Ray shuts down under it, burying the line that says what happened."""
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)


def stall_message(prog: Progress, limit: float) -> str:
    if prog.ready_at is None:
        what, knob = "no engine came up", "start_seconds"
    else:
        what, knob = f"no request finished ({prog.requests} so far)", "stall_seconds"
    return (
        f"[generate] stalled: {what} for {prog.stalled_seconds():.0f}s "
        f"(engine.{knob}={limit:g}), {prog.total - prog.done} of {prog.total} "
        "conversations unfinished. Check the engine actors' logs (`ray logs`, the dashboard; "
        "for engine.kind openai, whether the server answers), that the model fits its "
        f"device, and raise engine.{knob} if that legitimately takes longer. "
        "Finished work units are kept: a rerun of the same command resumes."
    )
