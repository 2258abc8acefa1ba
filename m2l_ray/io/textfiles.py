"""Text files as stored: gzip told by its magic bytes, a UTF-8 byte-order mark dropped.

One home for the rules every reader of JSONL follows (the seed readers line by line,
the curation readers as whole tables): a gzip file is recognised by its content,
whatever its name, and a byte-order mark (which editors on Windows write and
``json.loads`` rejects) never reaches a parser. Problems come out as ``UnreadableFile``
naming the file, which each caller may reword (the seed readers say "seed file ...").
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from typing import Any

from m2l_ray.errors import M2LError

_CHUNK = 1 << 22  # bytes per read of a text file: lines are streamed, never the whole file
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
# What a broken file raises while being read or decompressed.
READ_ERRORS = (OSError, EOFError, zlib.error)


class UnreadableFile(M2LError):
    """A file that can't be opened or decoded; the message starts with its path."""


def open_raw(fs: Any, path: str) -> Any:
    """The file's bytes as stored (``fs`` None: the local disk); pyarrow would decompress
    by extension on its own, so compression=None keeps one place that undoes gzip."""
    if fs is None:
        return open(path, "rb")  # noqa: SIM115 - closed by the caller's ``with``
    return fs.open_input_stream(path, compression=None)


class _Prefixed(io.RawIOBase):
    """A stream whose first bytes were already read (to sniff gzip's magic and the
    byte-order mark), readable by GzipFile and by pyarrow's readers."""

    def __init__(self, head: bytes, rest: Any) -> None:
        super().__init__()
        self._head, self._rest = head, rest

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._head:
            out, self._head = (self._head, b"") if n < 0 or n >= len(self._head) else (
                self._head[:n], self._head[n:])
            return out
        return self._rest.read() if n < 0 else self._rest.read(n)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def decoded(path: str, stream: Any) -> tuple[Any, bool]:
    """(readable stream of the file's text bytes, whether it was gzip) of a raw stream.

    Reading the returned stream may still raise one of ``READ_ERRORS`` (a gzip file cut
    short); ``read_errors`` words those.
    """
    gz = False
    try:
        head = stream.read(_CHUNK)
        gz = head[:2] == _GZIP_MAGIC
        if gz:
            source: Any = gzip.GzipFile(fileobj=_Prefixed(head, stream))
            head = source.read(_CHUNK)
        elif path.lower().endswith(".gz"):
            raise UnreadableFile(f"{path}: named .gz but not gzip-compressed")
        else:
            source = stream
    except READ_ERRORS as e:
        raise read_error(path, gz, e) from None
    return _Prefixed(head.removeprefix(_BOM), source), gz


def read_error(path: str, gz: bool, exc: BaseException) -> UnreadableFile:
    """The error for a file that broke while being read."""
    what = "not a readable gzip file" if gz else "can't read it"
    return UnreadableFile(f"{path}: {what}: {exc}")


def text_lines(path: str, stream: Any) -> Iterator[bytes]:
    """The file's lines (split on b"\\n" exactly as ``bytes.split`` does), streamed."""
    content, gz = decoded(path, stream)
    rest = b""
    try:
        while chunk := content.read(_CHUNK):
            parts = (rest + chunk).split(b"\n")
            rest = parts.pop()
            yield from parts
    except READ_ERRORS as e:
        raise read_error(path, gz, e) from None
    yield rest
