"""Reading and writing data sets for the stand-alone ``m2l dedup`` / ``m2l langid``.

All file-system access of those commands goes through ``read_table_any`` and
``write_output``, so that object storage (s3://) plugs in here and nowhere else.
Local paths or s3:// URIs: a file, a folder (every .parquet / .jsonl file in it,
recursively, sorted) or a glob; S3 goes through m2l_ray.storage (whole-object writes).

Inputs are read either as a Ray dataset (``read_table_any``, the distributed path)
or as one in-memory Arrow table (``read_table_local``, the single-node path);
``estimate_input`` sizes an input from file metadata, without reading it, so that
the command can choose between the two. Outputs are written the same way whatever
produced them: one file, or a folder of ``part-00000.parquet`` ... shards of
``shard_rows`` rows each, so that the files a user gets depend on the data and
that setting, never on how an engine cut its internal blocks.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from m2l_ray.errors import M2LError

PARQUET_EXT = (".parquet", ".pq")
JSONL_EXT = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz")
#: Rows per output shard of a folder output (``--shard-rows``).
DEFAULT_SHARD_ROWS = 100_000
#: In-memory size of JSONL text relative to its file (Arrow strings plus offsets);
#: gzip-compressed JSONL is taken to expand about five times.
_JSONL_FACTOR, _GZIP_FACTOR = 1.0, 5.0


def _kind(path: str) -> str | None:
    low = path.lower()
    if low.endswith(PARQUET_EXT):
        return "parquet"
    if low.endswith(JSONL_EXT):
        return "jsonl"
    return None


def _files(uri: str) -> list[str]:
    if "://" in uri:
        raise M2LError(f"{uri}: only local paths and s3:// are supported")
    path = os.path.expanduser(uri)
    if os.path.isdir(path):
        found = []
        for root, _dirs, names in os.walk(path):
            found += [os.path.join(root, n) for n in names
                      if _kind(n) and not n.startswith((".", "_"))]
        if not found:
            raise M2LError(f"{uri}: folder has no .parquet or .jsonl files")
        return sorted(found)
    if os.path.isfile(path):
        return [path]
    matches = sorted(p for p in glob.glob(path) if os.path.isfile(p))
    if not matches:
        raise M2LError(f"{uri}: no such file, folder or glob")
    return matches


def _input_files(uri: str) -> tuple[Any, list[str], str]:
    """(filesystem or None, files, "parquet" | "jsonl") of a file, folder or glob."""
    fs = None
    if uri.startswith("s3://"):
        from m2l_ray.storage import StorageOptions, open_input

        fs, files = open_input(uri, StorageOptions.from_dict(None))
        files = [f for f in files if _kind(f)]
        if not files:
            raise M2LError(f"{uri}: no .parquet or .jsonl objects")
    else:
        files = _files(uri)
    kinds = {_kind(f) for f in files}
    if None in kinds:
        bad = next(f for f in files if _kind(f) is None)
        raise M2LError(f"{bad}: unknown format (expected .parquet or .jsonl)")
    if len(kinds) > 1:
        raise M2LError(f"{uri}: mixes Parquet and JSONL files; pass one format")
    return fs, files, kinds.pop()


def read_table_any(uri: str) -> Any:
    """A Ray dataset over a Parquet or JSONL file, folder or glob (one format)."""
    import ray.data

    fs, files, kind = _input_files(uri)
    if kind == "parquet":
        return ray.data.read_parquet(files, filesystem=fs)
    if fs is not None:  # lines=True can't take a filesystem; Arrow's reader reads JSONL
        return ray.data.read_json(files, filesystem=fs)
    return ray.data.read_json(files, lines=True)


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
    import pyarrow.parquet as pq

    fs, files, kind = _input_files(uri)
    rows: int | None = 0
    mem = 0
    for f in files:
        if kind == "parquet":
            if fs is None:
                md = pq.ParquetFile(f).metadata
            else:
                with fs.open_input_file(f) as fh:
                    md = pq.ParquetFile(fh).metadata
            rows = (rows or 0) + md.num_rows
            mem += sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
        else:
            rows = None
            size = fs.get_file_info(f).size if fs is not None else os.path.getsize(f)
            gz = f.lower().endswith(".gz")
            mem += int(size * (_GZIP_FACTOR if gz else _JSONL_FACTOR))
    return InputSize(len(files), rows, mem)


def read_table_local(uri: str) -> pa.Table:
    """The whole input as one Arrow table in this process (the single-node path).

    Files are read in their sorted order and concatenated, with schemas unified as
    Ray Data would (a column missing from one file becomes null there).
    """
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    fs, files, kind = _input_files(uri)
    tables = []
    for f in files:
        if kind == "parquet":  # ParquetFile, not read_table: pyarrow.dataset and
            # the pandas it imports cost 0.3 s of a 3 s command
            with (fs.open_input_file(f) if fs is not None else open(f, "rb")) as fh:
                tables.append(pq.ParquetFile(fh).read())
            continue
        compression = "gzip" if f.lower().endswith(".gz") else None
        stream = (fs.open_input_stream(f, compression=compression) if fs is not None
                  else pa.input_stream(f, compression=compression))
        with stream as fh:
            tables.append(pj.read_json(fh))
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


def shard_name(i: int) -> str:
    return f"part-{i:05d}.parquet"


def _is_shard(name: str) -> bool:
    return len(name) == 18 and name.startswith("part-") and name[5:10].isdigit() \
        and name.endswith(".parquet")


def _write_s3(data: Any, uri: str, shard_rows: int) -> list[str]:
    """S3 output: whole objects only (a single file, or part-NNNNN.parquet under a prefix)."""
    from m2l_ray.storage import StorageOptions, Store

    kind = _kind(uri)
    parent, _, name = uri.rstrip("/").rpartition("/")
    batches, schema = _batches(data)
    if kind is None:
        store = Store.open(uri.rstrip("/"), StorageOptions.from_dict(None))
        out = []
        for i, t in enumerate(shards(batches, shard_rows, schema)):
            store.write_parquet(shard_name(i), t)
            out.append(store.key_uri(shard_name(i)))
        return out
    store = Store.open(parent, StorageOptions.from_dict(None))
    tables = [t if schema is None else t.select(schema.names).cast(schema) for t in batches]
    if kind == "parquet":
        table = pa.concat_tables(tables, promote_options="default") if tables else (
            schema.empty_table() if schema is not None else pa.table({}))
        store.write_parquet(name, table)
    else:
        data_ = "".join(_jsonl_lines(t) for t in tables).encode("utf-8")
        store.put_bytes(name, gzip.compress(data_) if name.lower().endswith(".gz") else data_)
    return [uri]


def _jsonl_lines(t: pa.Table) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in t.to_pylist())


def write_output(data: Any, uri: str, shard_rows: int = DEFAULT_SHARD_ROWS) -> list[str]:
    """Write ``data`` (a Ray dataset or an Arrow table): one .parquet / .jsonl file,
    or a folder of ``part-00000.parquet`` ... shards of ``shard_rows`` rows.

    Returns the files written. Rows keep the data's order; shards are written by a
    few threads while the next one is cut (Parquet encoding releases the GIL). A
    folder's earlier ``part-NNNNN.parquet`` files are removed first, so a smaller
    rerun leaves no stale shards behind; other files there are left alone.
    """
    if uri.startswith("s3://"):
        return _write_s3(data, uri, shard_rows)
    if "://" in uri:
        raise M2LError(f"{uri}: only local paths and s3:// are supported")
    import pyarrow.parquet as pq

    path = os.path.expanduser(uri)
    kind = _kind(path)
    batches, schema = _batches(data)
    if kind is None:
        os.makedirs(path, exist_ok=True)
        for n in os.listdir(path):
            if _is_shard(n):
                os.remove(os.path.join(path, n))
        out = []
        with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
            pending = []
            for i, t in enumerate(shards(batches, shard_rows, schema)):
                out.append(os.path.join(path, shard_name(i)))
                pending.append(pool.submit(_write_file, t, out[-1]))
                if len(pending) > 4:  # bound the shards held in memory
                    pending.pop(0).result()
            for f in pending:
                f.result()
        return out
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    if kind == "parquet":
        writer = None
        try:
            for t in shards(batches, shard_rows, schema):
                if writer is None:
                    writer = pq.ParquetWriter(tmp, t.schema)
                writer.write_table(t)
        finally:
            if writer is not None:
                writer.close()
    else:
        opener = gzip.open if path.lower().endswith(".gz") else open
        with opener(tmp, "wt", encoding="utf-8") as fh:
            for t in batches:
                for i in range(0, t.num_rows, 10_000):
                    fh.write(_jsonl_lines(t.slice(i, 10_000)))
    os.replace(tmp, path)
    return [path]


def _write_file(table: pa.Table, path: str) -> None:
    """One shard, atomically (a reader never sees half a file)."""
    import pyarrow.parquet as pq

    tmp = path + ".tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)
