"""``Store``: one root URI (a local dir or ``s3://bucket/prefix``) with key-relative
operations, so the pipeline never cares which kind it has.

Exactly-once: a reader must never see a half-written object at its final key, or a
resumed run would trust a truncated shard. S3 gives that for free when an object is
sent whole (single PUT, or a multipart upload that only appears on completion); a
local file is written to a temp file in the same directory and ``os.replace``-d. The
pipeline writes its manifest last; the manifest is the commit point.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from m2l_ray.errors import StorageError
from m2l_ray.io import lock
from m2l_ray.io.formats import Format, format_named, format_of
from m2l_ray.io.keys import parse_s3
from m2l_ray.io.options import StorageOptions
from m2l_ray.io.writers import writer_for


class Store:
    """A root URI (local dir or s3://bucket/prefix) with key-relative operations."""

    uri: str
    options: StorageOptions

    @classmethod
    def open(cls, uri: str, options: StorageOptions | None = None) -> Store:
        """A Store for ``uri``: ``s3://bucket/prefix``, ``file:///path`` or a local path."""
        from m2l_ray.io.local import LocalStore
        from m2l_ray.io.s3 import S3Store

        options = options or StorageOptions()
        if not isinstance(uri, str) or not uri.strip():
            raise StorageError("storage URI must be a non-empty string")
        uri = uri.strip()
        if uri.startswith("s3://"):
            bucket, prefix = parse_s3(uri)
            return S3Store(bucket, prefix, options)
        if "://" in uri and not uri.startswith("file://"):
            raise StorageError(f"unsupported storage URI {uri!r}: use a local path or s3://")
        path = uri.removeprefix("file://")
        return LocalStore(Path(path).expanduser().absolute(), options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r}, {self.options!r})"

    # Concrete stores implement the rest.
    def child(self, key: str) -> Store:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str = "") -> list[str]:
        raise NotImplementedError

    def put_bytes(self, key: str, data: bytes) -> None:
        """Atomic write of a small object (JSON, a lock, the card)."""
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def open_output(self, key: str) -> AbstractContextManager[Any]:
        """A writable binary stream whose content appears at ``key`` whole when the
        ``with`` block ends without error, and not at all otherwise (data shards: a local
        temp file renamed into place; on S3 one whole-object upload)."""
        raise NotImplementedError

    def read_table(self, key: str, columns: Sequence[str] | None = None,
                   format: str | None = None) -> pa.Table:
        """The table at ``key`` in ``format`` (by default the one its name says, see
        ``io.formats``); with ``columns``, only those (a missing one is an error)."""
        raise NotImplementedError

    def acquire_lock(self, key: str, run_id: str, force: bool = False) -> None:
        raise NotImplementedError

    def check_reachable(self) -> None:
        raise NotImplementedError

    def pyarrow_fs(self) -> tuple[pafs.FileSystem, str]:
        raise NotImplementedError

    def key_uri(self, key: str) -> str:
        """The full URI of ``key`` under this root (for messages and manifests)."""
        raise NotImplementedError

    # Shared on top of the primitives.
    def _format(self, key: str, format: str | None) -> Format:
        name = format or format_of(key)
        if name is None:
            raise StorageError(f"{self.key_uri(key)}: unknown data format (no known file ending)")
        return format_named(name)

    def write_parquet(self, key: str, table: pa.Table) -> dict:
        """Write a Parquet shard whole; returns ``{"key", "rows", "bytes", "sha256"}``."""
        return writer_for("parquet").write(self, key, table)

    def read_parquet(self, key: str, columns: list[str] | None = None) -> pa.Table:
        """The table at ``key``; with ``columns``, only those column chunks are read."""
        return self.read_table(key, columns, format="parquet")

    def put_json(self, key: str, obj: Any) -> None:
        """Atomic write of ``obj`` as stable (sorted, indented) UTF-8 JSON."""
        text = json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
        self.put_bytes(key, text.encode("utf-8"))

    def get_json(self, key: str) -> Any:
        data = self.get_bytes(key)
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StorageError(f"{self.key_uri(key)} is not valid JSON: {exc}") from None

    def read_lock(self, key: str) -> dict[str, Any] | None:
        """The lock's content; None if there is no lock, {} if it is unreadable garbage."""
        return lock.read_lock(self, key)

    def release_lock(self, key: str, run_id: str) -> None:
        """Delete the lock if ``run_id`` still holds it; leave a taken-over lock alone."""
        lock.release_lock(self, key, run_id)

    def supports_conditional_put(self) -> bool:
        """Whether creating a key only-if-absent is atomic on this store."""
        return True
