"""Error types that the CLI turns into one clear line instead of a traceback.

Every user-facing problem (bad config, unreadable seed file, unreachable storage)
is raised as an ``M2LError`` so that ``m2l`` can print it and exit non-zero before
the cluster spends money.
"""

from __future__ import annotations


class M2LError(Exception):
    """Base class for errors that are the user's to fix, printed without a traceback."""


class ConfigError(M2LError):
    """A job config value is missing or wrong; names the key so it can be found."""

    def __init__(self, key: str, problem: str, source: str | None = None) -> None:
        self.key = key
        self.problem = problem
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}config key '{key}': {problem}")


class SeedError(M2LError):
    """A seed source can't be read at all (missing file, unknown format)."""


class StorageError(M2LError):
    """Storage failed after its retries; a rerun of the same command resumes."""
