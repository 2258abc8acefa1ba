"""Local-or-S3 storage with exactly-once writes, a run lock, bounded retries, and the
data formats and shard writers every reader and writer of data files shares.

Every input and output of a job is a URI: a local path or ``s3://bucket/prefix``.

- ``options``: ``StorageOptions`` (how to reach S3; never credentials) and ``redact``;
- ``retry``: transient-error detection, retry with backoff, final errors (``NotFound``);
- ``keys``: what a key may be, joins, ``s3://`` parsing;
- ``lock``: the one-writer-per-output lock protocol;
- ``store``: ``Store`` (one root, key-relative operations; ``Store.open(uri)``), with
  ``local.LocalStore`` and ``s3.S3Store``;
- ``inputs``: ``open_input`` (a file, folder or glob to the files it names);
- ``formats``: the one table of data formats (``FORMATS``, ``format_of``);
- ``textfiles``: text as stored (gzip by magic bytes, byte-order mark dropped);
- ``writers``: shard writers by name (``writer_for("parquet")``, ``"jsonl"``).
"""

from m2l_ray.io.formats import FORMATS, Format, format_named, format_of, register_format
from m2l_ray.io.inputs import open_input
from m2l_ray.io.local import LocalStore
from m2l_ray.io.options import StorageOptions, redact
from m2l_ray.io.retry import NotFound
from m2l_ray.io.s3 import S3Store
from m2l_ray.io.store import Store
from m2l_ray.io.textfiles import UnreadableFile
from m2l_ray.io.writers import ShardWriter, is_shard, register_writer, writer_for

__all__ = [
    "FORMATS", "Format", "LocalStore", "NotFound", "S3Store", "ShardWriter", "StorageOptions",
    "Store", "UnreadableFile", "format_named", "format_of", "is_shard", "open_input", "redact",
    "register_format", "register_writer", "writer_for",
]
