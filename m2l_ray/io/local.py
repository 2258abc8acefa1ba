"""``LocalStore``: a local directory; atomicity from temp file + fsync + os.replace."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.fs as pafs

from m2l_ray.io import lock
from m2l_ray.io.keys import TMP_PREFIX, check_key
from m2l_ray.io.options import StorageOptions
from m2l_ray.io.retry import NotFound, wrap
from m2l_ray.io.store import Store


class LocalStore(Store):
    """A local directory; atomicity from temp file + fsync + os.replace in the same dir."""

    def __init__(self, root: Path, options: StorageOptions) -> None:
        self.root = root
        self.options = options
        self.uri = str(root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def child(self, key: str) -> Store:
        return LocalStore(self.root / check_key(key), self.options)

    def key_uri(self, key: str) -> str:
        return str(self._path(key))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        keys: list[str] = []
        for dirpath, _dirs, files in os.walk(self.root):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                if name.startswith(TMP_PREFIX):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    @contextmanager
    def open_output(self, key: str) -> Iterator[IO[bytes]]:
        """A temp file in the key's directory, fsync-ed and renamed over the key when the
        block ends; removed if it fails, so no reader ever sees part of a file."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
        except OSError as exc:
            raise wrap("cannot write", str(path), exc) from None
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            if isinstance(exc, OSError):
                raise wrap("cannot write", str(path), exc) from None
            raise
        _fsync_dir(path.parent)

    def put_bytes(self, key: str, data: bytes) -> None:
        with self.open_output(key) as fh:
            fh.write(memoryview(data))

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"{path} does not exist") from None
        except OSError as exc:
            raise wrap("cannot read", str(path), exc) from None

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise wrap("cannot delete", self.key_uri(key), exc) from None

    def read_table(self, key: str, columns: Sequence[str] | None = None,
                   format: str | None = None) -> pa.Table:
        path = self._path(key)
        fmt = self._format(key, format)
        if not path.is_file():
            raise NotFound(f"{path} does not exist")
        try:
            return fmt.read(None, str(path), columns)
        except OSError as exc:
            raise wrap(f"cannot read {fmt.name}", str(path), exc) from None

    def acquire_lock(self, key: str, run_id: str, force: bool = False) -> None:
        lock.acquire_local(self, self._path(key), key, run_id, force)

    def check_reachable(self) -> None:
        probe = f"{TMP_PREFIX}probe-{uuid.uuid4().hex}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / probe).write_bytes(b"")
            (self.root / probe).unlink()
        except OSError as exc:
            raise wrap("output is not writable:", str(self.root), exc) from None

    def pyarrow_fs(self) -> tuple[pafs.FileSystem, str]:
        return pafs.LocalFileSystem(), str(self.root)


def _fsync_dir(path: Path) -> None:
    """Make the rename durable; best effort (not all filesystems allow it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
