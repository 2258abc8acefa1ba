"""Seed files: which files a source names, their format, and their bytes as lines.

Kept apart from the row reading (``seeds.reader``) so that the file and format rules
have one home. The rules themselves (input expansion, format by file name, gzip by
magic bytes, a UTF-8 byte-order mark dropped) live in ``m2l_ray.io``, shared with every
other reader of data files; here they get the seed readers' wording of errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from m2l_ray.config import PACKAGE_SEEDS, SeedSource
from m2l_ray.errors import SeedError
from m2l_ray.io.formats import format_of, open_parquet
from m2l_ray.io.inputs import open_input
from m2l_ray.io.textfiles import UnreadableFile, open_raw, text_lines


def package_seed_files() -> list[str]:
    root = resources.files("m2l_ray").joinpath("data/seeds")
    return sorted(str(p) for p in Path(str(root)).glob("*.jsonl"))


def source_files(source: SeedSource, storage_options: Any) -> list[tuple[Any, str]]:
    """(filesystem, path) of every seed file of one source, in reading order (sorted);
    filesystem None for the package's own files."""
    if source.path == PACKAGE_SEEDS:
        return [(None, p) for p in package_seed_files()]
    fs, paths = open_input(source.path, storage_options)
    fmt = source.format
    keep = []
    for p in paths:
        kind = fmt if fmt != "auto" else format_of(p)
        if kind is not None:
            keep.append((fs, p))
    if not keep:
        raise SeedError(f"seed source {source.path}: no .jsonl/.json/.parquet files found")
    return keep


@contextmanager
def _seed_file_errors() -> Iterator[None]:
    """``io``'s ``UnreadableFile`` ("<path>: <problem>") in the seed readers' words."""
    try:
        yield
    except UnreadableFile as e:
        raise SeedError(f"seed file {e}") from None


def _open_stream(fs: Any, path: str) -> Any:
    """The file as stored (``io.textfiles.open_raw``), or SeedError naming it."""
    try:
        return open_raw(fs, path)
    except OSError as e:
        raise SeedError(f"seed file {path}: can't read it: {e}") from None


def _text_lines(path: str, stream: Any) -> Iterator[bytes]:
    """The file's lines, streamed, gzip and byte-order mark undone
    (``io.textfiles.text_lines``); a broken file is a SeedError naming it."""
    with _seed_file_errors():
        yield from text_lines(path, stream)


def parquet_file(fs: Any, path: str) -> Any:
    """A ``pyarrow.parquet.ParquetFile`` (footer read), or SeedError naming the file."""
    try:
        return open_parquet(fs, path)
    except OSError as e:
        raise SeedError(f"seed file {path}: can't read it: {e}") from None
    except Exception as e:  # noqa: BLE001 - any parse failure is the file's fault
        raise SeedError(f"seed file {path}: not a readable Parquet file: {e}") from None
