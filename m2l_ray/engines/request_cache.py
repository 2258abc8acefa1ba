"""A request cache for a paid remote model: never pay twice for the same completion.

Keyed by the sha256 of the canonical JSON of the request body exactly as sent (model,
messages, sampling fields, extra request fields), so any change to what is asked is a
new key and an unchanged request is a hit, whatever server (base URL) answers it.
Entries are whole JSON objects written with ``Store.put_json`` (temp file + rename
locally, one PUT on S3): a crash never leaves a half-written entry that a later run
would trust. They live under the job's output (``<output>/cache/requests/<hh>/<sha>.json``
by default) so a resumed job, or a repeated one pointed at the same cache, replays
finished completions with their original usage instead of sending them again.

Only successful completions are stored; failures are retried by a later run.
Store calls are blocking (boto3 / files), so the async wrappers run them in a thread
to keep the actor's event loop (and every other request in flight) moving.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from m2l_ray.engines.base import Completion
from m2l_ray.errors import StorageError
from m2l_ray.io import NotFound, Store

log = logging.getLogger(__name__)

#: Bumped when the meaning of a key or an entry changes; old entries then stop matching.
CACHE_FORMAT = "m2l-request-cache/1"
DEFAULT_PREFIX = "cache/requests"


def canonical_json(obj: Any) -> str:
    """One text per value: sorted keys, no whitespace, UTF-8 kept (so the hash is stable)."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def request_key(body: Mapping[str, Any]) -> str:
    """sha256 hex of the cache format tag and the canonical request body."""
    blob = canonical_json({"format": CACHE_FORMAT, "request": body}).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


class RequestCache:
    """Completions by request key in a Store (local folder or S3 prefix)."""

    def __init__(self, store: Store, prefix: str = DEFAULT_PREFIX) -> None:
        self.store = store
        self.prefix = prefix.strip("/")

    def path(self, key: str) -> str:
        """Two hex characters of fan-out keep listings and local folders small."""
        return f"{self.prefix}/{key[:2]}/{key}.json" if self.prefix else f"{key[:2]}/{key}.json"

    def get(self, key: str) -> Completion | None:
        """The stored completion, or None if absent or unreadable (then it is re-asked)."""
        try:
            entry = self.store.get_json(self.path(key))
        except NotFound:
            return None
        except StorageError as e:
            log.warning("request cache entry %s unreadable, asking the server again: %s", key, e)
            return None
        try:
            c = entry["completion"]
            return Completion(
                str(c["text"]), int(c["prompt_tokens"]), int(c["completion_tokens"]),
                str(c["finish_reason"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            log.warning("request cache entry %s malformed (%s), asking the server again", key, e)
            return None

    def put(self, key: str, body: Mapping[str, Any], completion: Completion) -> None:
        """Store one completion with the request it answers (auditable, self-describing)."""
        self.store.put_json(self.path(key), {
            "format": CACHE_FORMAT,
            "key": key,
            "request": dict(body),
            "completion": {
                "text": completion.text,
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "finish_reason": completion.finish_reason,
            },
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        })

    async def aget(self, key: str) -> Completion | None:
        return await asyncio.to_thread(self.get, key)

    async def aput(self, key: str, body: Mapping[str, Any], completion: Completion) -> None:
        await asyncio.to_thread(self.put, key, body, completion)
