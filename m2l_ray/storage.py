"""Local-or-S3 storage with exactly-once writes, a run lock and bounded retries.

Every input and output of a job is a URI: a local path or ``s3://bucket/prefix``. A
``Store`` is one such root with key-relative operations, so the pipeline never cares
which kind it has.

Why it is built this way:

* Exactly-once: a reader must never see a half-written object at its final key, or a
  resumed run would trust a truncated shard. S3 gives that for free when an object is
  sent whole (single PUT, or a multipart upload that only appears on completion); a
  local file is written to a temp file in the same directory and ``os.replace``-d. The
  pipeline writes its manifest last; the manifest is the commit point.
* One writer per output prefix: two runs writing the same prefix would clobber each
  other's shards (Ray once lost data this way). ``acquire_lock`` creates a lock object
  with S3's conditional put (``If-None-Match: *``), which SeaweedFS 4.x and AWS honour.
  Servers that ignore the header are covered by a check-before-put and a read-back
  after a settle delay; on those the residual race is two runs starting within that
  delay of each other, both seeing no lock, and the earlier reader taking the read-back
  before the later write lands.
* Faults: boto3 and pyarrow each retry single requests (AWS "standard" mode). Around
  whole operations sits ``_retry``: exponential backoff with jitter, bounded by
  ``StorageOptions.retry_seconds``. Past the budget a ``StorageError`` says a rerun of
  the same command resumes, which is true because nothing partial is ever committed.
  The bound is checked between attempts, so one attempt that already started may run
  past it by its own inner retries.
* Credentials only ever come from the standard AWS chain (environment, profile,
  instance role), never from the job config, and are never logged: every message goes
  through ``redact``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from m2l_ray.errors import ConfigError, StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")

_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN")
_CREDENTIAL_WORDS = ("access_key", "accesskey", "secret", "token", "password", "credential")
_RESUME_HINT = "a rerun of the same command will resume from what is already committed"
# Temp files of in-flight local writes; hidden from listings and never a final key.
_TMP_PREFIX = ".m2l-tmp-"
_GLOB_CHARS = re.compile(r"[*?\[]")
# Words in pyarrow's S3 error messages that no retry can fix.
_AUTH_WORDS = ("ACCESS_DENIED", "ACCESSDENIED", "INVALID_ACCESS_KEY", "INVALIDACCESSKEY",
               "SIGNATURE_DOES_NOT_MATCH", "SIGNATUREDOESNOTMATCH", "FORBIDDEN",
               "HTTP STATUS 403", "MISSING_AUTHENTICATION")


def redact(text: str) -> str:
    """Remove the values of the AWS credential variables in the environment from ``text``.

    Error messages from the SDKs can echo request details; this is applied to every
    message this module logs or raises so a key never reaches a log or a terminal.
    """
    out = str(text)
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            out = out.replace(value, f"<{name} redacted>")
    return out


class NotFound(StorageError, FileNotFoundError):
    """The key does not exist; a FileNotFoundError too, so callers may catch either."""


@dataclass(frozen=True)
class StorageOptions:
    """How to reach object storage; holds no credentials (those come from the AWS chain).

    ``endpoint_url`` and ``region`` fall back to the environment at use time
    (``M2L_S3_ENDPOINT``, ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``;
    ``AWS_REGION``/``AWS_DEFAULT_REGION``)
    so a job config can stay the same across a laptop with SeaweedFS and a cloud bucket.
    """

    endpoint_url: str | None = None
    region: str | None = None
    path_style: bool = False
    max_attempts: int = 8
    retry_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError("storage.max_attempts", "must be at least 1")
        if self.retry_seconds < 0:
            raise ConfigError("storage.retry_seconds", "must not be negative")

    @classmethod
    def from_dict(cls, d: Mapping | None, source: str | None = None) -> StorageOptions:
        """Build from the job config's ``storage:`` section, refusing credentials there.

        Credentials in a config file end up in git and in dataset cards; they must come
        from the AWS chain instead, so any key that looks like one is an error.
        """
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ConfigError("storage", "must be a mapping", source)
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for raw_key, value in d.items():
            key = str(raw_key)
            name = f"storage.{key}"
            if any(word in key.lower().replace("-", "_") for word in _CREDENTIAL_WORDS):
                raise ConfigError(
                    name,
                    "credentials must not be in the job config; they come from the AWS "
                    "chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY env vars, AWS_PROFILE, "
                    "or an instance role)",
                    source,
                )
            if key not in known:
                raise ConfigError(name, f"unknown key; known keys: {', '.join(known)}", source)
            values[key] = _check_option(key, value, source)
        return cls(**values)

    def resolved_endpoint(self) -> str | None:
        """The configured endpoint, else $M2L_S3_ENDPOINT, $AWS_ENDPOINT_URL_S3 or
        $AWS_ENDPOINT_URL."""
        return (
            self.endpoint_url
            or os.environ.get("M2L_S3_ENDPOINT")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )

    def resolved_region(self) -> str | None:
        """The region: configured, else AWS_REGION/AWS_DEFAULT_REGION, else us-east-1 for
        custom endpoints (S3-compatible servers ignore it, but signing needs one)."""
        region = self.region or os.environ.get("AWS_REGION") or os.environ.get(
            "AWS_DEFAULT_REGION"
        )
        if not region and self.resolved_endpoint():
            region = "us-east-1"
        return region


def _check_option(key: str, value: Any, source: str | None) -> Any:
    name = f"storage.{key}"
    if key in ("endpoint_url", "region"):
        if value is not None and not isinstance(value, str):
            raise ConfigError(name, "must be a string", source)
        if key == "endpoint_url" and value:
            parsed = urlparse(value)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ConfigError(name, "must look like http(s)://host[:port]", source)
            if parsed.username or parsed.password:
                raise ConfigError(name, "must not carry credentials", source)
        return value
    if key == "path_style":
        if not isinstance(value, bool):
            raise ConfigError(name, "must be true or false", source)
        return value
    if key == "max_attempts":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(name, "must be an integer >= 1", source)
        return value
    if key == "retry_seconds":
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(name, "must be a number of seconds >= 0", source)
        return float(value)
    raise AssertionError(key)  # pragma: no cover - from_dict filters unknown keys


# --------------------------------------------------------------------------- errors


def _is_transient(exc: BaseException) -> bool:
    """True for failures that a later attempt can fix (network, 5xx, throttling)."""
    if isinstance(exc, StorageError):
        return False
    try:
        import botocore.exceptions as bce
    except ImportError:  # pragma: no cover - boto3 is a dependency
        bce = None
    if bce is not None:
        if isinstance(exc, bce.ClientError):
            err = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            code = str(err.get("Code", ""))
            return status >= 500 or status == 429 or code in {
                "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                "InternalError", "ServiceUnavailable", "RequestLimitExceeded",
            }
        if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
            return False
        if isinstance(
            exc,
            bce.ConnectionError
            | bce.HTTPClientError
            | bce.IncompleteReadError
            | bce.ResponseStreamingError,
        ):
            return True
        if isinstance(exc, bce.BotoCoreError):
            return False
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return False
    if isinstance(exc, OSError):
        # pyarrow reports every S3 failure as OSError; only auth/bucket problems are final.
        msg = str(exc).upper()
        return not any(word in msg for word in (*_AUTH_WORDS, "NO_SUCH_BUCKET", "NOSUCHBUCKET"))
    return False


def _describe(exc: BaseException) -> str:
    return redact(f"{type(exc).__name__}: {exc}")


def _retry(what: str, fn: Callable[[], T], options: StorageOptions) -> T:
    """Run ``fn`` until it succeeds, a final error occurs, or the time budget is spent.

    Exponential backoff (0.25 s doubling to 8 s) with jitter spreads retries of many
    workers hitting the same recovering server. Non-transient errors surface at once.
    """
    deadline = time.monotonic() + options.retry_seconds
    attempt = 0
    start = time.monotonic()
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if not _is_transient(exc):
                raise
            base = min(8.0, 0.25 * 2 ** (attempt - 1))
            delay = base / 2 + random.uniform(0, base / 2)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StorageError(
                    f"{what} failed after {attempt} attempt(s) over "
                    f"{time.monotonic() - start:.1f}s: {_describe(exc)}. Storage looks "
                    f"unreachable; {_RESUME_HINT}."
                ) from None
            delay = min(delay, remaining)
            log.warning("%s failed (attempt %d), retrying in %.1fs: %s",
                        what, attempt, delay, _describe(exc))
            time.sleep(delay)


def _wrap(what: str, uri: str, exc: BaseException) -> StorageError:
    """A final (non-retried) error as a StorageError naming the object and the likely fix."""
    try:
        import botocore.exceptions as bce
    except ImportError:  # pragma: no cover
        bce = None
    detail = _describe(exc)
    if bce is not None and isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
        return StorageError(
            f"{what} {uri}: no AWS credentials found; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with an instance role"
        )
    if bce is not None and isinstance(exc, bce.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchBucket",):
            return StorageError(f"{what} {uri}: the bucket does not exist")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            return StorageError(
                f"{what} {uri}: access denied ({code}); check the credentials the AWS "
                "chain provides (env vars, AWS_PROFILE, instance role) and the bucket policy"
            )
    upper = str(exc).upper()
    if isinstance(exc, OSError) and any(w in upper for w in ("NO_SUCH_BUCKET", "NOSUCHBUCKET")):
        return StorageError(f"{what} {uri}: the bucket does not exist")
    if isinstance(exc, OSError) and any(w in upper for w in _AUTH_WORDS):
        return StorageError(
            f"{what} {uri}: access denied; check the credentials the AWS chain provides "
            f"(env vars, AWS_PROFILE, instance role) and the bucket policy ({detail})"
        )
    return StorageError(f"{what} {uri}: {detail}")


# --------------------------------------------------------------------------- keys


def _check_key(key: str) -> str:
    """Keys are relative, '/'-separated, without '.', '..' or empty parts: a key can
    never escape its root, on disk or in a bucket."""
    if not isinstance(key, str):
        raise StorageError(f"storage key must be a string, got {type(key).__name__}")
    if not key:
        raise StorageError("storage key must not be empty")
    if key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
        raise StorageError(f"bad storage key {key!r}: use a relative path without '..'")
    return key


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def _parse_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StorageError(f"bad S3 URI {uri!r}: expected s3://bucket[/prefix]")
    return bucket, prefix.strip("/")


def _lock_body(run_id: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _holder_text(holder: Mapping[str, Any] | None) -> str:
    if not holder:
        return "an unknown run (unreadable lock)"
    return (
        f"run {holder.get('run_id')!r} (host {holder.get('host')}, pid {holder.get('pid')}, "
        f"started {holder.get('started_at')})"
    )


def _locked_error(uri: str, key: str, holder: Mapping[str, Any] | None) -> StorageError:
    return StorageError(
        f"output {uri} is locked by {_holder_text(holder)} (lock object {key}); another "
        "run is writing there. Wait for it to finish, use another output, or, if that run "
        "is dead, rerun with the force option to take the lock over."
    )


def _table_bytes(table: pa.Table) -> pa.Buffer:
    """Serialise in memory first: the checksum is known before upload, and the upload is
    one whole-object write, so a failure never leaves a partial object behind."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


# --------------------------------------------------------------------------- stores


class Store:
    """A root URI (local dir or s3://bucket/prefix) with key-relative operations."""

    uri: str
    options: StorageOptions

    @classmethod
    def open(cls, uri: str, options: StorageOptions | None = None) -> Store:
        """A Store for ``uri``: ``s3://bucket/prefix``, ``file:///path`` or a local path."""
        options = options or StorageOptions()
        if not isinstance(uri, str) or not uri.strip():
            raise StorageError("storage URI must be a non-empty string")
        uri = uri.strip()
        if uri.startswith("s3://"):
            bucket, prefix = _parse_s3(uri)
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
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def write_parquet(self, key: str, table: pa.Table) -> dict:
        raise NotImplementedError

    def read_parquet(self, key: str, columns: list[str] | None = None) -> pa.Table:
        """The table at ``key``; with ``columns``, only those column chunks are read."""
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
        try:
            data = self.get_bytes(key)
        except NotFound:
            return None
        try:
            holder = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def release_lock(self, key: str, run_id: str) -> None:
        """Delete the lock if ``run_id`` still holds it; leave a taken-over lock alone."""
        holder = self.read_lock(key)
        if holder is None:
            return
        if holder.get("run_id") != run_id:
            log.warning("not releasing lock %s: it is now held by %s",
                        self.key_uri(key), _holder_text(holder))
            return
        self.delete(key)

    def supports_conditional_put(self) -> bool:
        """Whether creating a key only-if-absent is atomic on this store."""
        return True


class LocalStore(Store):
    """A local directory; atomicity from temp file + fsync + os.replace in the same dir."""

    def __init__(self, root: Path, options: StorageOptions) -> None:
        self.root = root
        self.options = options
        self.uri = str(root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def child(self, key: str) -> Store:
        return LocalStore(self.root / _check_key(key), self.options)

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
                if name.startswith(_TMP_PREFIX):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def _atomic_write(self, key: str, data: bytes | memoryview | pa.Buffer) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        except OSError as exc:
            raise _wrap("cannot write", str(path), exc) from None
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(memoryview(data))
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
                raise _wrap("cannot write", str(path), exc) from None
            raise
        _fsync_dir(path.parent)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(key, data)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(f"{path} does not exist") from None
        except OSError as exc:
            raise _wrap("cannot read", str(path), exc) from None

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _wrap("cannot delete", self.key_uri(key), exc) from None

    def write_parquet(self, key: str, table: pa.Table) -> dict:
        buf = _table_bytes(table)
        self._atomic_write(key, buf)
        return {"key": key, "rows": table.num_rows, "bytes": buf.size,
                "sha256": hashlib.sha256(memoryview(buf)).hexdigest()}

    def read_parquet(self, key: str, columns: list[str] | None = None) -> pa.Table:
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"{path} does not exist")
        try:
            return pq.read_table(str(path), columns=columns)
        except OSError as exc:
            raise _wrap("cannot read parquet", str(path), exc) from None

    def acquire_lock(self, key: str, run_id: str, force: bool = False) -> None:
        """Create the lock with a hard link from a complete temp file: link() fails if
        the lock exists, so creation is atomic and the lock is never seen half-written.
        (On filesystems without hard links, O_EXCL creation is the fallback.)"""
        path = self._path(key)
        body = json.dumps(_lock_body(run_id), sort_keys=True).encode()
        for _ in range(3):
            try:
                self._create_lock_file(path, body, force)
            except FileExistsError:
                holder = self.read_lock(key)
                if holder is None:
                    continue  # released between our attempt and the read: try again
                if holder.get("run_id") == run_id:
                    return  # our own lock: a resumed run
                raise _locked_error(self.uri, key, holder) from None
            except OSError as exc:
                raise _wrap("cannot create lock", str(path), exc) from None
            if force:
                log.warning("took over lock %s for run %s", path, run_id)
            return
        raise StorageError(f"lock {path} keeps appearing and vanishing; is another run "
                           "starting and stopping there?")

    @staticmethod
    def _create_lock_file(path: Path, body: bytes, force: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            if force:
                os.replace(tmp, path)
                return
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise
            except OSError:
                excl = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                with os.fdopen(excl, "wb") as fh:
                    fh.write(body)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def check_reachable(self) -> None:
        probe = f"{_TMP_PREFIX}probe-{uuid.uuid4().hex}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / probe).write_bytes(b"")
            (self.root / probe).unlink()
        except OSError as exc:
            raise _wrap("output is not writable:", str(self.root), exc) from None

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


# (endpoint, bucket) -> whether If-None-Match:* is honoured; probed once per process.
_CONDITIONAL_PUT: dict[tuple[str | None, str], bool] = {}


_CLIENTS: dict[tuple[Any, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def _cached(kind: str, options: StorageOptions, extra: tuple[Any, ...],
            make: Callable[[], T]) -> T:
    """One client per process, settings and AWS environment.

    Building a boto3 client costs ~0.1 s (it loads the service model), too much per
    shard. The key holds a one-way digest of the AWS_* variables so a changed
    environment (another profile, new keys) gets a fresh client; nothing secret is kept
    in the key itself.
    """
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_"))
    digest = hashlib.sha256(repr(env).encode()).hexdigest()
    key = (kind, os.getpid(), options.resolved_endpoint(), options.resolved_region(),
           options.path_style, options.max_attempts, extra, digest)
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            client = _CLIENTS[key] = make()
    return client


class S3Store(Store):
    """``s3://bucket/prefix``: boto3 for small objects, listing and locks; pyarrow for data.

    Holds no client itself (clients are shared per process by ``_cached``), so a Store
    pickles cleanly to Ray workers, which build their own.
    """

    # Seconds to wait before reading a lock back on servers without conditional put.
    lock_settle_seconds = 1.0

    def __init__(self, bucket: str, prefix: str, options: StorageOptions) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.options = options
        self.uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"

    # ---- clients

    def client(self) -> Any:
        """The boto3 S3 client (credentials from the AWS chain)."""
        return self._make_client(self.options.max_attempts, connect_timeout=5)

    def _make_client(self, max_attempts: int, connect_timeout: float) -> Any:
        opts = self.options

        def make() -> Any:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"mode": "standard", "max_attempts": max_attempts},
                s3={"addressing_style": "path" if opts.path_style else "auto"},
                connect_timeout=connect_timeout,
                read_timeout=60,
                max_pool_connections=32,
            )
            return boto3.session.Session().client(
                "s3",
                endpoint_url=opts.resolved_endpoint(),
                region_name=opts.resolved_region(),
                config=config,
            )

        return _cached("boto3", opts, (max_attempts, connect_timeout), make)

    def _pyarrow_s3(self) -> pafs.S3FileSystem:
        opts = self.options

        def make() -> pafs.S3FileSystem:
            kwargs: dict[str, Any] = {
                "region": opts.resolved_region(),
                "retry_strategy": pafs.AwsStandardS3RetryStrategy(
                    max_attempts=opts.max_attempts
                ),
                "connect_timeout": 5,
                "request_timeout": 60,
            }
            endpoint = opts.resolved_endpoint()
            if endpoint:
                parsed = urlparse(endpoint)
                kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
                kwargs["scheme"] = parsed.scheme or "https"
                # Arrow already uses path-style addressing with an endpoint override (and
                # virtual-host style on AWS), which is what path_style asks for.
            return pafs.S3FileSystem(**{k: v for k, v in kwargs.items() if v is not None})

        return _cached("pyarrow", opts, (), make)

    # ---- keys

    def _key(self, key: str) -> str:
        return _join(self.prefix, _check_key(key))

    def key_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def child(self, key: str) -> Store:
        return S3Store(self.bucket, self._key(key), self.options)

    def _call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        """Retry ``fn``; map final failures to StorageError/NotFound naming the object."""
        uri = self.key_uri(key) if key else self.uri
        try:
            return _retry(f"{what} {uri}", fn, self.options)
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - every final failure -> StorageError
            if _is_not_found(exc):
                raise NotFound(f"{uri} does not exist") from None
            raise _wrap(f"cannot {what}", uri, exc) from None

    # ---- objects

    def exists(self, key: str) -> bool:
        full = self._key(key)

        def head() -> bool:
            try:
                self.client().head_object(Bucket=self.bucket, Key=full)
                return True
            except Exception as exc:
                if _is_not_found(exc):
                    return False
                raise

        return self._call("check", key, head)

    def list(self, prefix: str = "") -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        query = base + prefix

        def run() -> list[str]:
            keys: list[str] = []
            paginator = self.client().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=query):
                for item in page.get("Contents", []):
                    k = item["Key"]
                    name = k.rsplit("/", 1)[-1]
                    if k.endswith("/") or name.startswith(_TMP_PREFIX):
                        continue  # directory markers; probes left by a crashed process
                    keys.append(k[len(base):])
            return sorted(keys)

        return self._call("list", "", run)

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self._key(key)
        body = bytes(data)
        self._call("write", key, lambda: self.client().put_object(
            Bucket=self.bucket, Key=full, Body=body))

    def get_bytes(self, key: str) -> bytes:
        full = self._key(key)

        def get() -> bytes:
            return self.client().get_object(Bucket=self.bucket, Key=full)["Body"].read()

        return self._call("read", key, get)

    def delete(self, key: str) -> None:
        full = self._key(key)
        self._call("delete", key, lambda: self.client().delete_object(
            Bucket=self.bucket, Key=full))

    def write_parquet(self, key: str, table: pa.Table) -> dict:
        buf = _table_bytes(table)
        path = f"{self.bucket}/{self._key(key)}"

        def upload() -> None:
            # One write of the whole buffer, then close: the object appears only when the
            # PUT (or multipart completion) finishes; a failed part aborts the upload.
            out = self._pyarrow_s3().open_output_stream(path)
            try:
                out.write(buf)
            finally:
                out.close()

        self._call("write", key, upload)
        return {"key": key, "rows": table.num_rows, "bytes": buf.size,
                "sha256": hashlib.sha256(memoryview(buf)).hexdigest()}

    def read_parquet(self, key: str, columns: list[str] | None = None) -> pa.Table:
        path = f"{self.bucket}/{self._key(key)}"
        return self._call("read parquet", key,
                          lambda: pq.read_table(path, columns=columns, filesystem=self._pyarrow_s3()))

    # ---- locks

    def _put_if_absent(self, full: str, body: bytes) -> bool | None:
        """Conditional create. True: created; False: key exists; None: header unsupported."""
        import botocore.exceptions as bce

        try:
            self.client().put_object(Bucket=self.bucket, Key=full, Body=body, IfNoneMatch="*")
            return True
        except bce.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = exc.response.get("Error", {}).get("Code")
            if status in (412, 409) or code in ("PreconditionFailed",
                                               "ConditionalRequestConflict"):
                return False
            if status == 501 or code == "NotImplemented":
                return None
            raise

    def supports_conditional_put(self) -> bool:
        """Probe once whether the server refuses a second If-None-Match:* put of a key."""
        cache_key = (self.options.resolved_endpoint(), self.bucket)
        if cache_key not in _CONDITIONAL_PUT:
            probe = self._key(f"{_TMP_PREFIX}cond-{uuid.uuid4().hex}")

            def run() -> bool:
                try:
                    first = self._put_if_absent(probe, b"1")
                    second = self._put_if_absent(probe, b"2") if first else None
                    return bool(first) and second is False
                finally:
                    self.client().delete_object(Bucket=self.bucket, Key=probe)

            _CONDITIONAL_PUT[cache_key] = self._call("probe conditional put on", "", run)
        return _CONDITIONAL_PUT[cache_key]

    def acquire_lock(self, key: str, run_id: str, force: bool = False) -> None:
        """Create the lock only if absent; refuse naming the holder; ``force`` takes over.

        With conditional put (probed once per server) creation is atomic. Without it, a
        check-before-put plus a read-back after ``lock_settle_seconds`` narrows the race
        to two runs starting within that window (see the module docstring).
        """
        full = self._key(key)
        body = json.dumps(_lock_body(run_id), sort_keys=True).encode()
        if force:
            previous = self.read_lock(key)
            self.put_bytes(key, body)
            if previous and previous.get("run_id") != run_id:
                log.warning("took over lock %s from %s", self.key_uri(key),
                            _holder_text(previous))
            self._verify_lock(key, run_id)
            return
        holder = self.read_lock(key)
        if holder is not None:
            if holder.get("run_id") == run_id:
                return  # our own lock: a resumed run or a retried acquire
            raise _locked_error(self.uri, key, holder)
        created = self._call("create lock", key, lambda: self._put_if_absent(full, body))
        if created is False:
            # Someone else won, or our own earlier attempt landed before a lost response.
            self._verify_lock(key, run_id)
            return
        if created is None:
            self.put_bytes(key, body)  # server rejects the header: plain put
        elif self.supports_conditional_put():
            return
        log.warning("%s ignores conditional put; lock %s is checked by read-back only",
                    self.options.resolved_endpoint() or "S3", self.key_uri(key))
        time.sleep(self.lock_settle_seconds)
        self._verify_lock(key, run_id)

    def _verify_lock(self, key: str, run_id: str) -> None:
        holder = self.read_lock(key)
        if not holder or holder.get("run_id") != run_id:
            raise _locked_error(self.uri, key, holder)

    # ---- preflight

    def check_reachable(self) -> None:
        """Fail fast (no long retry budget) if the bucket is missing or not writable."""
        import botocore.exceptions as bce

        probe = self._key(f"{_TMP_PREFIX}probe-{uuid.uuid4().hex}")
        endpoint = self.options.resolved_endpoint() or "AWS S3"
        client = self._make_client(min(2, self.options.max_attempts), connect_timeout=3)
        try:
            client.head_bucket(Bucket=self.bucket)
            client.put_object(Bucket=self.bucket, Key=probe, Body=b"")
            client.delete_object(Bucket=self.bucket, Key=probe)
        except bce.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if status == 404 or code in ("NoSuchBucket", "404"):
                raise StorageError(
                    f"bucket {self.bucket!r} does not exist at {endpoint} (output {self.uri})"
                ) from None
            if status == 403 or code in ("AccessDenied", "403", "Forbidden"):
                raise StorageError(
                    f"access denied to {self.uri} at {endpoint}: the credentials from the AWS "
                    "chain (env vars, AWS_PROFILE, instance role) can't write there"
                ) from None
            raise _wrap("cannot write to", self.uri, exc) from None
        except (bce.NoCredentialsError, bce.PartialCredentialsError) as exc:
            raise _wrap("cannot write to", self.uri, exc) from None
        except bce.BotoCoreError as exc:
            raise StorageError(
                f"cannot reach storage at {endpoint} for {self.uri}: {_describe(exc)}"
            ) from None

    def pyarrow_fs(self) -> tuple[pafs.FileSystem, str]:
        return self._pyarrow_s3(), _join(self.bucket, self.prefix)


def _is_not_found(exc: BaseException) -> bool:
    if isinstance(exc, FileNotFoundError):
        return True
    try:
        import botocore.exceptions as bce
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, bce.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return code in ("NoSuchKey", "404", "NotFound") or (
            status == 404 and code != "NoSuchBucket"
        )
    return False


# --------------------------------------------------------------------------- inputs


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
        cut = raw.rfind("/", 0, match.start())
        base, pattern = (raw[:cut] or "/", raw[cut + 1:]) if cut >= 0 else (".", raw)
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
