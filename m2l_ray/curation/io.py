"""Reading and writing data sets for the stand-alone ``m2l dedup`` / ``m2l langid``.

All file-system access of those commands goes through ``read_table_any``,
``read_table_local``, ``estimate_input`` and ``write_output``, and those go through
``m2l_ray.io``: inputs are expanded by ``io.inputs.open_input`` (a file, a folder,
recursively and sorted, or a glob; local or s3://), their format comes from the one
table in ``io.formats`` (every file of one input has one format), and outputs are
written whole through a ``Store`` by an ``io.writers`` shard writer.

Inputs are read either as a Ray dataset (``read_table_any``, the distributed path)
or as one in-memory Arrow table (``read_table_local``, the single-node path);
``estimate_input`` sizes an input from file metadata, without reading it, so that
the command can choose between the two. Outputs are written the same way whatever
produced them: one file (.parquet, .jsonl, .jsonl.gz ...), or a folder of
``part-00000.parquet`` ... shards of ``shard_rows`` rows each, so that the files a
user gets depend on the data and that setting, never on how an engine cut its
internal blocks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from m2l_ray.errors import M2LError
from m2l_ray.io.formats import Format, expected_extensions, format_named, format_of, labels
from m2l_ray.io.inputs import open_input
from m2l_ray.io.keys import split_last
from m2l_ray.io.store import Store
from m2l_ray.io.writers import ShardWriter, is_shard, writer_for

#: Rows per output shard of a folder output (``--shard-rows``).
DEFAULT_SHARD_ROWS = 100_000
_WRITE_THREADS = max(1, min(4, os.cpu_count() or 1))
_PENDING_SHARDS = 4  # encoded shards waiting for a writer thread at most: bounded memory


def _input_files(uri: str) -> tuple[Any, list[str], Format]:
    """(filesystem, files, format) of a file, folder or glob; every file of one format."""
    fs, paths = open_input(uri)
    files = [p for p in paths if format_of(p)]
    if not files:
        if len(paths) == 1:
            raise M2LError(f"{paths[0]}: unknown format (expected {expected_extensions()})")
        raise M2LError(f"{uri}: no {expected_extensions()} files")
    kinds = {format_of(f) for f in files}
    if len(kinds) > 1:
        raise M2LError(f"{uri}: mixes {labels(kinds)} files; pass one format")
    return fs, files, format_named(kinds.pop())


def read_table_any(uri: str) -> Any:
    """A Ray dataset over a Parquet or JSONL file, folder or glob (one format)."""
    fs, files, fmt = _input_files(uri)
    return fmt.read_dataset(files, fs)


@dataclass(frozen=True)
class InputSize:
    """What an input holds, from metadata alone: rows (None for JSONL) and the bytes
    its columns take once decoded into Arrow memory (estimated for JSONL)."""

    files: int
    rows: int | None
    memory_bytes: int


def estimate_input(uri: str) -> InputSize:
    """Size of an input without reading its data: Parquet footers give rows and
    uncompressed column bytes; JSONL is sized by its files."""
    fs, files, fmt = _input_files(uri)
    rows: int | None = 0
    mem = 0
    for f in files:
        n, size = fmt.size(fs, f)
        rows = None if n is None or rows is None else rows + n
        mem += size
    return InputSize(len(files), rows, mem)


def read_table_local(uri: str) -> pa.Table:
    """The whole input as one Arrow table in this process (the single-node path).

    Files are read in their sorted order and concatenated, with schemas unified as
    Ray Data would (a column missing from one file becomes null there).
    """
    fs, files, fmt = _input_files(uri)
    tables = [fmt.read(fs, f, None) for f in files]
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="default")


# ------------------------------------------------------------------ output


def _batches(data: Any) -> tuple[Iterable[pa.Table], pa.Schema | None]:
    """Batches of a Ray dataset or an Arrow table, and the schema they are cast to."""
    if isinstance(data, pa.Table):
        return [data], data.schema
    schema = data.schema()
    return (data.iter_batches(batch_size=None, batch_format="pyarrow"),
            schema.base_schema if schema is not None else None)


def shards(batches: Iterable[pa.Table], shard_rows: int,
           schema: pa.Schema | None = None) -> Iterator[pa.Table]:
    """Re-cut a stream of tables into tables of exactly ``shard_rows`` rows (the last
    one shorter), in order. At least one table comes out (empty for no rows), so an
    output always carries the schema."""
    if shard_rows < 1:
        raise M2LError(f"--shard-rows must be at least 1, not {shard_rows}")
    buf: list[pa.Table] = []
    have = 0
    emitted = False
    for batch in batches:
        t = batch if schema is None else batch.select(schema.names).cast(schema)
        while t.num_rows:
            take = min(shard_rows - have, t.num_rows)
            buf.append(t.slice(0, take))
            have += take
            t = t.slice(take)
            if have == shard_rows:
                yield pa.concat_tables(buf).combine_chunks()
                emitted = True
                buf, have = [], 0
    if buf or not emitted:
        if buf:
            yield pa.concat_tables(buf).combine_chunks()
        elif schema is not None:
            yield schema.empty_table()
        else:
            yield pa.table({})


def write_output(data: Any, uri: str, shard_rows: int = DEFAULT_SHARD_ROWS,
                 writer: str = "parquet") -> list[str]:
    """Write ``data`` (a Ray dataset or an Arrow table): one file in the format its
    name says (.parquet, .jsonl, .jsonl.gz ...), or, for any other name, a folder of
    ``part-00000<suffix>`` ... shards of ``shard_rows`` rows by the ``writer`` named
    (``io.writers``: "parquet", "jsonl").

    Returns the files written. Rows keep the data's order; every file appears whole
    or not at all (``Store.open_output``). A folder's earlier ``part-NNNNN`` shards are
    removed first, so a smaller rerun leaves no stale shards behind; other files there
    are left alone.
    """
    batches, schema = _batches(data)
    tables = shards(batches, shard_rows, schema)
    kind = format_of(uri)
    if kind is None:
        return _write_folder(Store.open(uri), tables, writer_for(writer))
    parent, name = split_last(uri.rstrip("/"))
    store = Store.open(parent)
    with store.open_output(name) as sink:  # streamed: a big output is never all in memory
        writer_for(format_named(kind).writer).stream(sink, tables, compress=name.lower().endswith(".gz"))
    return [store.key_uri(name)]


def _write_folder(store: Store, tables: Iterable[pa.Table], writer: ShardWriter) -> list[str]:
    """Shards written by a few threads while the next one is cut (encoding releases the
    GIL); at most ``_PENDING_SHARDS`` wait, so memory stays bounded."""
    for key in store.list("part-"):
        if is_shard(key):
            store.delete(key)
    out = []
    with ThreadPoolExecutor(_WRITE_THREADS) as pool:
        pending: list[Future[Any]] = []
        for i, t in enumerate(tables):
            key = writer.shard_name(i)
            out.append(store.key_uri(key))
            pending.append(pool.submit(writer.write, store, key, t))
            if len(pending) > _PENDING_SHARDS:
                pending.pop(0).result()
        for f in pending:
            f.result()
    return out
