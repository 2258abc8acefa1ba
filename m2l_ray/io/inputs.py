"""Input expansion: a file, a folder or a glob (local or s3://) to the files it names.

Every reader of user data (seed sources, ``m2l dedup`` / ``m2l langid`` inputs) expands
its URI here, so what a folder or a glob means is the same everywhere.
"""

from __future__ import annotations

import re

import pyarrow.fs as pafs

from m2l_ray.errors import StorageError
from m2l_ray.io.keys import split_last
from m2l_ray.io.local import LocalStore
from m2l_ray.io.options import StorageOptions
from m2l_ray.io.s3 import S3Store
from m2l_ray.io.store import Store

_GLOB_CHARS = re.compile(r"[*?\[]")


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Shell-style glob over '/'-separated keys: '*' and '?' stay inside one path part,
    '**' crosses parts, '[...]' is a character class."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
                i += 1
            else:
                body = pattern[i + 1:end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _visible(key: str) -> bool:
    """Inputs skip hidden and underscore files (``_SUCCESS``, ``.crc``) like pyarrow does."""
    return not any(part.startswith((".", "_")) for part in key.split("/"))


def open_input(
    uri: str, options: StorageOptions | None = None
) -> tuple[pafs.FileSystem, list[str]]:
    """Expand a file, folder or glob (local or s3) to sorted file paths on one filesystem.

    Folders are read recursively, skipping hidden and ``_``-prefixed files (``_SUCCESS``,
    ``.crc``) as pyarrow does; a glob skips them too unless its last part starts with
    '.' or '_'. Glob '*' stays within one path part, '**' crosses parts. Paths are in the
    returned filesystem's form (``bucket/key`` for S3), ready for ``ray.data.read_*``.
    """
    options = options or StorageOptions()
    raw = uri.strip() if isinstance(uri, str) else ""
    if not raw:
        raise StorageError("input URI must be a non-empty string")
    match = _GLOB_CHARS.search(raw)
    if match:
        base, pattern = split_last(raw, match.start())
        if base in ("s3:", "s3:/", "s3://"):
            raise StorageError(f"input {uri!r}: the bucket name can't be a glob")
        store = Store.open(base, options)
        regex = _glob_regex(pattern)
        keys = [k for k in store.list() if regex.match(k)]
        if not pattern.rsplit("/", 1)[-1].startswith((".", "_")):
            keys = [k for k in keys if _visible(k)]
    else:
        store, keys = _file_or_folder(raw, options)
    fs, root = store.pyarrow_fs()
    paths = sorted(f"{root.rstrip('/')}/{k}" for k in keys)
    if not paths:
        raise StorageError(f"input {uri} matches no files")
    return fs, paths


def _file_or_folder(raw: str, options: StorageOptions) -> tuple[Store, list[str]]:
    """(store, keys): a single file as its parent folder plus its name, else the folder."""
    store = Store.open(raw, options)
    if isinstance(store, LocalStore):
        if store.root.is_file():
            return LocalStore(store.root.parent, options), [store.root.name]
        if not store.root.exists():
            raise StorageError(f"input {raw} does not exist")
    elif isinstance(store, S3Store) and store.prefix:
        parent, _, name = store.prefix.rpartition("/")
        as_file = S3Store(store.bucket, parent, options)
        if as_file.exists(name):
            return as_file, [name]
    return store, [k for k in store.list() if _visible(k)]
