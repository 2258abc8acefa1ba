"""Key rules: what a storage key may be, how keys join, how an s3:// URI splits.

A key is relative to a store's root and can never escape it, on disk or in a bucket.
"""

from __future__ import annotations

from m2l_ray.errors import StorageError

# Temp files of in-flight writes and probes; hidden from listings and never a final key.
TMP_PREFIX = ".m2l-tmp-"


def check_key(key: str) -> str:
    """Keys are relative, '/'-separated, without '.', '..' or empty parts: a key can
    never escape its root, on disk or in a bucket."""
    if not isinstance(key, str):
        raise StorageError(f"storage key must be a string, got {type(key).__name__}")
    if not key:
        raise StorageError("storage key must not be empty")
    if key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
        raise StorageError(f"bad storage key {key!r}: use a relative path without '..'")
    return key


def join(*parts: str) -> str:
    """Non-empty parts joined by single slashes."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def parse_s3(uri: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket[/prefix]``."""
    rest = uri[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StorageError(f"bad S3 URI {uri!r}: expected s3://bucket[/prefix]")
    return bucket, prefix.strip("/")


def split_last(uri: str, end: int | None = None) -> tuple[str, str]:
    """(parent, last part) of a local path or s3:// URI, cut at the last '/' before ``end``.

    The parent is "/" for a path at the root and "." for a bare name, so it can always
    be opened as a store; the output of a single file is written as a key of its parent.
    """
    cut = uri.rfind("/", 0, len(uri) if end is None else end)
    if cut < 0:
        return ".", uri
    return uri[:cut] or "/", uri[cut + 1:]
