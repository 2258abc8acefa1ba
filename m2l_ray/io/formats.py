"""The one table of data formats: how a file's name tells its format, how to read one.

Every reader of data files (seed sources, ``m2l dedup`` / ``m2l langid`` inputs, a
store's ``read_table``) asks this table, so a format is added by one ``Format`` entry
(plus its writer in ``io.writers``) and is then known everywhere. A name ending in
``.gz`` is the same format compressed; gzip itself is handled by ``io.textfiles``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from m2l_ray.io.textfiles import READ_ERRORS, decoded, open_raw, read_error

#: (filesystem or None for the local disk, path, columns or None for all) -> table
Reader = Callable[[Any, str, Sequence[str] | None], pa.Table]
#: (paths, filesystem) -> a Ray dataset over those files
DatasetReader = Callable[[list[str], Any], Any]
#: (filesystem or None, path) -> (rows or None when unknown, bytes once decoded into Arrow)
Sizer = Callable[[Any, str], tuple[int | None, int]]


@dataclass(frozen=True)
class Format:
    """One data format: its name, the file name endings that mean it, how to read it,
    and the name of the ``io.writers`` writer that writes it."""

    name: str
    label: str  # for messages: "Parquet", "JSONL"
    extensions: tuple[str, ...]  # lower case, longest first where one ends another
    read: Reader
    read_dataset: DatasetReader
    size: Sizer
    writer: str
    gzip_ok: bool = False  # ``<extension>.gz`` names mean this format, gzip-compressed


# ------------------------------------------------------------------ Parquet


def open_parquet(fs: Any, path: str) -> Any:
    """A ``pyarrow.parquet.ParquetFile`` (its footer read). ParquetFile, not
    ``pq.read_table``: pyarrow.dataset and the pandas it imports cost 0.3 s of a 3 s
    command."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path if fs is None else fs.open_input_file(path))


def _read_parquet(fs: Any, path: str, columns: Sequence[str] | None) -> pa.Table:
    pf = open_parquet(fs, path)
    if columns is not None:
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing:  # ParquetFile would silently return nothing for them
            raise pa.ArrowInvalid(f"{path}: no column(s) {', '.join(missing)}")
    return pf.read(columns=None if columns is None else list(columns))


def _parquet_dataset(paths: list[str], fs: Any) -> Any:
    import ray.data

    return ray.data.read_parquet(paths, filesystem=fs)


def _parquet_size(fs: Any, path: str) -> tuple[int | None, int]:
    md = open_parquet(fs, path).metadata
    return md.num_rows, sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))


# ------------------------------------------------------------------ JSONL

#: In-memory size of JSONL text relative to its file (Arrow strings plus offsets);
#: gzip-compressed JSONL is taken to expand about five times.
_JSONL_FACTOR, _GZIP_FACTOR = 1.0, 5.0


def _read_jsonl(fs: Any, path: str, columns: Sequence[str] | None) -> pa.Table:
    import pyarrow.json as pj

    with open_raw(fs, path) as stream:
        content, gz = decoded(path, stream)
        try:
            table = pj.read_json(content)
        except READ_ERRORS as e:
            raise read_error(path, gz, e) from None
    return table if columns is None else table.select(list(columns))


def _jsonl_dataset(paths: list[str], fs: Any) -> Any:
    import pyarrow.fs as pafs
    import ray.data

    if fs is None or isinstance(fs, pafs.LocalFileSystem):
        return ray.data.read_json(paths, lines=True)
    # lines=True can't take a filesystem; Arrow's reader (the default) reads JSONL
    return ray.data.read_json(paths, filesystem=fs)


def _jsonl_size(fs: Any, path: str) -> tuple[int | None, int]:
    size = fs.get_file_info(path).size if fs is not None else os.path.getsize(path)
    return None, int(size * (_GZIP_FACTOR if path.lower().endswith(".gz") else _JSONL_FACTOR))


# ------------------------------------------------------------------ the table

PARQUET = Format("parquet", "Parquet", (".parquet", ".pq"), _read_parquet, _parquet_dataset,
                 _parquet_size, writer="parquet")
JSONL = Format("jsonl", "JSONL", (".jsonl", ".json", ".ndjson"), _read_jsonl, _jsonl_dataset,
               _jsonl_size, writer="jsonl", gzip_ok=True)

#: Every format, by name, in the order messages list them.
FORMATS: dict[str, Format] = {f.name: f for f in (PARQUET, JSONL)}


def register_format(fmt: Format) -> None:
    """Add (or replace) a format: every reader knows it from then on."""
    FORMATS[fmt.name] = fmt


def format_of(path: str) -> str | None:
    """The name of the format a file's name says (``.jsonl``, ``.json.gz``, ``.pq`` ...),
    or None for a name no format claims."""
    low = path.lower()
    gz = low.endswith(".gz")
    low = low.removesuffix(".gz")
    for fmt in FORMATS.values():
        if low.endswith(fmt.extensions) and (fmt.gzip_ok or not gz):
            return fmt.name
    return None


def format_named(name: str) -> Format:
    """The format called ``name``; KeyError names the known ones."""
    try:
        return FORMATS[name]
    except KeyError:
        raise KeyError(f"unknown format {name!r}; known: {', '.join(FORMATS)}") from None


def expected_extensions() -> str:
    """".parquet or .jsonl": the main ending of each format, for messages."""
    return " or ".join(f.extensions[0] for f in FORMATS.values())


def labels(names: Sequence[str] | set[str]) -> str:
    """"Parquet and JSONL": the labels of some formats in table order, for messages."""
    return " and ".join(f.label for f in FORMATS.values() if f.name in names)
