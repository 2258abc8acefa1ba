"""Joining or starting Ray for a job, with Ray Data's own progress output off by default."""

from __future__ import annotations

import logging
import os

#: set to 1 (or pass ``m2l run --ray-progress``) to see Ray Data's own per-operator progress
RAY_PROGRESS_ENV = "M2L_RAY_PROGRESS"


def ray_data_progress(show: bool | None = None) -> None:
    """Ray Data's progress bars and execution logs are off unless asked for: they count
    blocks, which sit still while a block's conversations run, so they read as a hang
    beside our own lines."""
    from ray.data import DataContext

    if show is None:
        show = os.environ.get(RAY_PROGRESS_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    DataContext.get_current().enable_progress_bars = show
    logging.getLogger("ray.data").setLevel(logging.INFO if show else logging.WARNING)


def ray_init(address: str | None = None) -> None:
    """Join the job's Ray cluster once per process.

    No address: a fresh local instance, never a stray `ray start` cluster on the same
    machine. Submitted jobs get RAY_ADDRESS; `m2l run --address auto` joins a running one.
    """
    import ray

    ray_data_progress()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=True)
