"""Storage faults: which failures are transient, retrying them, and the final errors.

boto3 and pyarrow each retry single requests (AWS "standard" mode). Around whole
operations sits ``retry``: exponential backoff with jitter, bounded by
``StorageOptions.retry_seconds``. Past the budget a ``StorageError`` says a rerun of the
same command resumes, which is true because nothing partial is ever committed. The
bound is checked between attempts, so one attempt that already started may run past
it by its own inner retries. A failure no retry can fix (auth, missing bucket) is
turned by ``wrap`` into a ``StorageError`` naming the object and the likely fix.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from m2l_ray.errors import StorageError
from m2l_ray.io.options import StorageOptions, redact

log = logging.getLogger(__name__)

T = TypeVar("T")

RESUME_HINT = "a rerun of the same command will resume from what is already committed"
# Words in pyarrow's S3 error messages that no retry can fix.
_AUTH_WORDS = ("ACCESS_DENIED", "ACCESSDENIED", "INVALID_ACCESS_KEY", "INVALIDACCESSKEY",
               "SIGNATURE_DOES_NOT_MATCH", "SIGNATUREDOESNOTMATCH", "FORBIDDEN",
               "HTTP STATUS 403", "MISSING_AUTHENTICATION")
_NO_BUCKET_WORDS = ("NO_SUCH_BUCKET", "NOSUCHBUCKET")


class NotFound(StorageError, FileNotFoundError):
    """The key does not exist; a FileNotFoundError too, so callers may catch either."""


def _botocore() -> Any:
    try:
        import botocore.exceptions as bce
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return None
    return bce


def is_transient(exc: BaseException) -> bool:
    """True for failures that a later attempt can fix (network, 5xx, throttling)."""
    if isinstance(exc, StorageError):
        return False
    bce = _botocore()
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
        return not any(word in msg for word in (*_AUTH_WORDS, *_NO_BUCKET_WORDS))
    return False


def is_not_found(exc: BaseException) -> bool:
    """True when the object (not the bucket) is missing."""
    if isinstance(exc, FileNotFoundError):
        return True
    bce = _botocore()
    if bce is not None and isinstance(exc, bce.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return code in ("NoSuchKey", "404", "NotFound") or (
            status == 404 and code != "NoSuchBucket"
        )
    return False


def describe(exc: BaseException) -> str:
    """``Type: message`` with credentials redacted."""
    return redact(f"{type(exc).__name__}: {exc}")


def retry(what: str, fn: Callable[[], T], options: StorageOptions) -> T:
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
            if not is_transient(exc):
                raise
            base = min(8.0, 0.25 * 2 ** (attempt - 1))
            delay = base / 2 + random.uniform(0, base / 2)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StorageError(
                    f"{what} failed after {attempt} attempt(s) over "
                    f"{time.monotonic() - start:.1f}s: {describe(exc)}. Storage looks "
                    f"unreachable; {RESUME_HINT}."
                ) from None
            delay = min(delay, remaining)
            log.warning("%s failed (attempt %d), retrying in %.1fs: %s",
                        what, attempt, delay, describe(exc))
            time.sleep(delay)


def wrap(what: str, uri: str, exc: BaseException) -> StorageError:
    """A final (non-retried) error as a StorageError naming the object and the likely fix."""
    bce = _botocore()
    detail = describe(exc)
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
    if isinstance(exc, OSError) and any(w in upper for w in _NO_BUCKET_WORDS):
        return StorageError(f"{what} {uri}: the bucket does not exist")
    if isinstance(exc, OSError) and any(w in upper for w in _AUTH_WORDS):
        return StorageError(
            f"{what} {uri}: access denied; check the credentials the AWS chain provides "
            f"(env vars, AWS_PROFILE, instance role) and the bucket policy ({detail})"
        )
    return StorageError(f"{what} {uri}: {detail}")
