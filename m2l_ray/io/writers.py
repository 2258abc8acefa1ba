"""Shard writers: one interface that turns Arrow tables into the bytes of one file.

A writer knows its name and file suffix and how to encode tables; a store decides
where the bytes go and makes the write whole (``Store.open_output``). So an output
format is one ``ShardWriter`` subclass plus ``register_writer`` (and its ``Format``
entry in ``io.formats`` for reading it back), and every writer of shards (the job's
final configs, ``m2l dedup`` / ``m2l langid`` folders) can use it by name::

    meta = writer_for("jsonl").write(store, "full_data/" + writer.shard_name(0), table)

Output is deterministic: the same table gives the same bytes (gzip without a time
stamp or file name in its header), so a rerun's shards compare equal and their
checksums in a manifest stay meaningful.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

if TYPE_CHECKING:
    from m2l_ray.io.store import Store

_JSONL_SLICE = 10_000  # rows turned into text at once: bounded memory for big tables


class ShardWriter(ABC):
    """Encodes Arrow tables (one schema) as one file of one format."""

    name: ClassVar[str]
    suffix: ClassVar[str]
    #: whether a file of no rows still says its columns (Parquet does, JSONL can't): a
    #: format that can't gets no shard for an empty table, which readers such as
    #: ``datasets`` would fail on
    empty_keeps_schema: ClassVar[bool] = True

    @abstractmethod
    def write_to(self, sink: Any, tables: Iterable[pa.Table]) -> None:
        """Write ``tables``, in order, as one file into the binary ``sink`` (which stays
        open): a streaming write, for outputs too big to hold encoded in memory."""

    def stream(self, sink: Any, tables: Iterable[pa.Table], compress: bool = False) -> None:
        """``write_to``, gzip-compressed when ``compress`` (for ``.gz`` names)."""
        if not compress:
            self.write_to(sink, tables)
            return
        with gzip.GzipFile(fileobj=sink, mode="wb", mtime=0, filename="") as gz:
            self.write_to(gz, tables)

    def encode(self, table: pa.Table, compress: bool = False) -> pa.Buffer:
        """The whole file for ``table``, in memory."""
        sink = pa.BufferOutputStream()
        self.stream(sink, [table], compress)
        return sink.getvalue()

    def write(self, store: Store, key: str, table: pa.Table) -> dict[str, Any]:
        """Write ``table`` whole at ``key`` (gzip-compressed if the key ends in ``.gz``).

        Encoded in memory first: the checksum is known before upload, and the upload is
        one whole-object write, so a failure never leaves a partial object behind.
        Returns what a manifest records: ``{"key", "rows", "bytes", "sha256"}``.
        """
        buf = self.encode(table, compress=key.lower().endswith(".gz"))
        with store.open_output(key) as out:
            out.write(buf)
        return {"key": key, "rows": table.num_rows, "bytes": buf.size,
                "sha256": hashlib.sha256(memoryview(buf)).hexdigest()}

    def shard_name(self, i: int) -> str:
        """``part-00000<suffix>``: the name of shard ``i`` in a folder of shards."""
        return f"part-{i:05d}{self.suffix}"


class ParquetShardWriter(ShardWriter):
    """Parquet with zstd: what the job's shards and ``m2l dedup`` folders are."""

    name = "parquet"
    suffix = ".parquet"

    def write_to(self, sink: Any, tables: Iterable[pa.Table]) -> None:
        import pyarrow.parquet as pq

        writer = None
        try:
            for t in tables:
                if writer is None:
                    writer = pq.ParquetWriter(sink, t.schema, compression="zstd")
                if t.num_rows:  # an empty file has its schema and no row group: a row
                    writer.write_table(t)  # group of 0 rows breaks readers (datasets' batch size 0)
        finally:
            if writer is not None:
                writer.close()


class JsonlShardWriter(ShardWriter):
    """One JSON object per line, UTF-8 as is (not \\u-escaped), columns in schema order;
    values JSON lacks (timestamps, binary) as their ``str``."""

    name = "jsonl"
    suffix = ".jsonl"
    empty_keeps_schema = False

    def write_to(self, sink: Any, tables: Iterable[pa.Table]) -> None:
        for t in tables:
            for i in range(0, t.num_rows, _JSONL_SLICE):
                rows = t.slice(i, _JSONL_SLICE).to_pylist()
                text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
                sink.write(text.encode("utf-8"))


_WRITERS: dict[str, ShardWriter] = {}


def register_writer(writer: ShardWriter) -> ShardWriter:
    """Make ``writer`` available by its name (replacing one of the same name)."""
    _WRITERS[writer.name] = writer
    return writer


def writer_for(name: str) -> ShardWriter:
    """The writer called ``name`` ("parquet", "jsonl", ...)."""
    try:
        return _WRITERS[name]
    except KeyError:
        raise KeyError(f"unknown shard writer {name!r}; known: {', '.join(_WRITERS)}") from None


def writers() -> list[str]:
    """Names of the registered writers."""
    return list(_WRITERS)


def is_shard(name: str) -> bool:
    """Whether a file name is ``part-NNNNN`` plus the suffix of a registered writer."""
    suffixes = "|".join(re.escape(w.suffix) for w in _WRITERS.values())
    return re.fullmatch(rf"part-\d{{5,}}(?:{suffixes})", name) is not None


register_writer(ParquetShardWriter())
register_writer(JsonlShardWriter())
