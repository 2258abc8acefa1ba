"""Reading and writing data sets for the stand-alone ``m2l dedup`` / ``m2l langid``.

All file-system access of those commands goes through ``read_table_any`` and
``write_output``, so that object storage (s3://) plugs in here and nowhere else.
Local paths or s3:// URIs: a file, a folder (every .parquet / .jsonl file in it,
recursively, sorted) or a glob; S3 goes through m2l_ray.storage (whole-object writes).
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from typing import Any

import pyarrow as pa

from m2l_ray.errors import M2LError

PARQUET_EXT = (".parquet", ".pq")
JSONL_EXT = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz")


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


def read_table_any(uri: str) -> Any:
    """A Ray dataset over a Parquet or JSONL file, folder or glob (one format)."""
    import ray.data

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
    if kinds == {"parquet"}:
        return ray.data.read_parquet(files, filesystem=fs)
    if fs is not None:  # lines=True can't take a filesystem; Arrow's reader reads JSONL
        return ray.data.read_json(files, filesystem=fs)
    return ray.data.read_json(files, lines=True)


def _write_s3(ds: Any, uri: str) -> list[str]:
    """S3 output: whole objects only (a single file, or part-NNNNN.parquet under a prefix)."""
    from m2l_ray.storage import StorageOptions, Store

    kind = _kind(uri)
    parent, _, name = uri.rstrip("/").rpartition("/")
    if kind is None:
        store = Store.open(uri.rstrip("/"), StorageOptions.from_dict(None))
        out = []
        for i, batch in enumerate(ds.iter_batches(batch_size=None, batch_format="pyarrow")):
            store.write_parquet(f"part-{i:05d}.parquet", batch)
            out.append(store.key_uri(f"part-{i:05d}.parquet"))
        return out
    store = Store.open(parent, StorageOptions.from_dict(None))
    tables = list(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    if kind == "parquet":
        table = pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
        store.write_parquet(name, table)
    else:
        lines = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n"
                        for t in tables for r in t.to_pylist())
        data = lines.encode("utf-8")
        store.put_bytes(name, gzip.compress(data) if name.lower().endswith(".gz") else data)
    return [uri]


def write_output(ds: Any, uri: str) -> list[str]:
    """Write ``ds``: one .parquet / .jsonl file, or a folder of Parquet files.

    Returns the files written. A single file is streamed from the driver batch by
    batch (its order is the dataset's); a folder is written by Ray in parallel.
    """
    if uri.startswith("s3://"):
        return _write_s3(ds, uri)
    if "://" in uri:
        raise M2LError(f"{uri}: only local paths and s3:// are supported")
    path = os.path.expanduser(uri)
    kind = _kind(path)
    if kind is None:
        os.makedirs(path, exist_ok=True)
        ds.write_parquet(path)
        return sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".parquet"))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    if kind == "parquet":
        import pyarrow.parquet as pq

        schema = ds.schema().base_schema if ds.schema() is not None else None
        writer = None
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                table = batch if schema is None else batch.select(schema.names).cast(schema)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
            if writer is None:
                pq.write_table(pa.table({n: pa.array([], t) for n, t in
                                         zip(schema.names, schema.types, strict=True)})
                               if schema is not None else pa.table({}), tmp)
        finally:
            if writer is not None:
                writer.close()
    else:
        opener = gzip.open if path.lower().endswith(".gz") else open
        with opener(tmp, "wt", encoding="utf-8") as fh:
            for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                for row in batch.to_pylist():
                    fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)
    return [path]
