"""``S3Store``: ``s3://bucket/prefix`` through boto3 (small objects, listing, locks) and
pyarrow (data), with clients shared per process."""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from m2l_ray.errors import StorageError
from m2l_ray.io import lock
from m2l_ray.io.keys import TMP_PREFIX, check_key, join
from m2l_ray.io.options import StorageOptions
from m2l_ray.io.retry import NotFound, describe, is_not_found, retry, wrap
from m2l_ray.io.store import Store

T = TypeVar("T")

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

    def full_key(self, key: str) -> str:
        """The object key in the bucket of ``key`` under this store's prefix."""
        return join(self.prefix, check_key(key))

    def key_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.full_key(key)}"

    def child(self, key: str) -> Store:
        return S3Store(self.bucket, self.full_key(key), self.options)

    def call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        """Retry ``fn``; map final failures to StorageError/NotFound naming the object."""
        uri = self.key_uri(key) if key else self.uri
        try:
            return retry(f"{what} {uri}", fn, self.options)
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - every final failure -> StorageError
            if is_not_found(exc):
                raise NotFound(f"{uri} does not exist") from None
            raise wrap(f"cannot {what}", uri, exc) from None

    # ---- objects

    def exists(self, key: str) -> bool:
        full = self.full_key(key)

        def head() -> bool:
            try:
                self.client().head_object(Bucket=self.bucket, Key=full)
                return True
            except Exception as exc:
                if is_not_found(exc):
                    return False
                raise

        return self.call("check", key, head)

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
                    if k.endswith("/") or name.startswith(TMP_PREFIX):
                        continue  # directory markers; probes left by a crashed process
                    keys.append(k[len(base):])
            return sorted(keys)

        return self.call("list", "", run)

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self.full_key(key)
        body = bytes(data)
        self.call("write", key, lambda: self.client().put_object(
            Bucket=self.bucket, Key=full, Body=body))

    def get_bytes(self, key: str) -> bytes:
        full = self.full_key(key)

        def get() -> bytes:
            return self.client().get_object(Bucket=self.bucket, Key=full)["Body"].read()

        return self.call("read", key, get)

    def delete(self, key: str) -> None:
        full = self.full_key(key)
        self.call("delete", key, lambda: self.client().delete_object(
            Bucket=self.bucket, Key=full))

    @contextmanager
    def open_output(self, key: str) -> Iterator[pa.BufferOutputStream]:
        """An in-memory buffer, uploaded whole when the block ends: the object appears
        only when the PUT (or multipart completion) finishes; nothing on failure."""
        sink = pa.BufferOutputStream()
        yield sink
        buf = sink.getvalue()
        path = f"{self.bucket}/{self.full_key(key)}"

        def upload() -> None:
            # compression=None: a .gz key holds what the writer made, not gzip of it again
            out = self._pyarrow_s3().open_output_stream(path, compression=None)
            try:
                out.write(buf)
            finally:
                out.close()

        self.call("write", key, upload)

    def read_table(self, key: str, columns: Sequence[str] | None = None,
                   format: str | None = None) -> pa.Table:
        fmt = self._format(key, format)
        path = f"{self.bucket}/{self.full_key(key)}"
        return self.call(f"read {fmt.name}", key, lambda: fmt.read(self._pyarrow_s3(), path, columns))

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
            probe = self.full_key(f"{TMP_PREFIX}cond-{uuid.uuid4().hex}")

            def run() -> bool:
                try:
                    first = self._put_if_absent(probe, b"1")
                    second = self._put_if_absent(probe, b"2") if first else None
                    return bool(first) and second is False
                finally:
                    self.client().delete_object(Bucket=self.bucket, Key=probe)

            _CONDITIONAL_PUT[cache_key] = self.call("probe conditional put on", "", run)
        return _CONDITIONAL_PUT[cache_key]

    def acquire_lock(self, key: str, run_id: str, force: bool = False) -> None:
        lock.acquire_s3(self, key, run_id, force)

    # ---- preflight

    def check_reachable(self) -> None:
        """Fail fast (no long retry budget) if the bucket is missing or not writable."""
        import botocore.exceptions as bce

        probe = self.full_key(f"{TMP_PREFIX}probe-{uuid.uuid4().hex}")
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
            raise wrap("cannot write to", self.uri, exc) from None
        except (bce.NoCredentialsError, bce.PartialCredentialsError) as exc:
            raise wrap("cannot write to", self.uri, exc) from None
        except bce.BotoCoreError as exc:
            raise StorageError(
                f"cannot reach storage at {endpoint} for {self.uri}: {describe(exc)}"
            ) from None

    def pyarrow_fs(self) -> tuple[pafs.FileSystem, str]:
        return self._pyarrow_s3(), join(self.bucket, self.prefix)
