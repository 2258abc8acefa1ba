"""How to reach object storage (``StorageOptions``), and ``redact`` for every message.

Credentials only ever come from the standard AWS chain (environment, profile,
instance role), never from the job config, and are never logged: every message the
storage layer logs or raises goes through ``redact``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from m2l_ray.errors import ConfigError
from m2l_ray.validation import knob, parse

_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN")
_CREDENTIAL_WORDS = ("access_key", "accesskey", "secret", "token", "password", "credential")


def redact(text: str) -> str:
    """Remove the values of the AWS credential variables in the environment from ``text``.

    Error messages from the SDKs can echo request details; this is applied to every
    message the storage layer logs or raises so a key never reaches a log or a terminal.
    """
    out = str(text)
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            out = out.replace(value, f"<{name} redacted>")
    return out


def _endpoint(value: Any) -> Any:
    """An endpoint URL as given, or None for an empty one; refuses other shapes and
    user:password@ in the URL (credentials never live in the job config)."""
    if not value or not isinstance(value, str):
        return value or None
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("must look like http(s)://host[:port]")
    if parsed.username or parsed.password:
        raise ValueError("must not carry credentials")
    return value


@dataclass(frozen=True)
class StorageOptions:
    """How to reach object storage; holds no credentials (those come from the AWS chain).

    ``endpoint_url`` and ``region`` fall back to the environment at use time
    (``M2L_S3_ENDPOINT``, ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``;
    ``AWS_REGION``/``AWS_DEFAULT_REGION``)
    so a job config can stay the same across a laptop with SeaweedFS and a cloud bucket.
    """

    endpoint_url: str | None = knob(None, convert=_endpoint)
    region: str | None = knob(None, convert=lambda v: v or None)
    path_style: bool = False
    max_attempts: int = knob(8, ge=1)
    retry_seconds: float = knob(60.0, ge=0)

    @classmethod
    def from_dict(cls, d: Mapping | None, source: str | None = None) -> StorageOptions:
        """Build from the job config's ``storage:`` section, refusing credentials there.

        Credentials in a config file end up in git and in dataset cards; they must come
        from the AWS chain instead, so any key that looks like one is an error (before
        anything else, so the message says why rather than "unknown key").
        """
        for raw_key in d if isinstance(d, Mapping) else ():
            key = str(raw_key)
            if any(word in key.lower().replace("-", "_") for word in _CREDENTIAL_WORDS):
                raise ConfigError(
                    f"storage.{key}",
                    "credentials must not be in the job config; they come from the AWS "
                    "chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY env vars, AWS_PROFILE, "
                    "or an instance role)",
                    source,
                )
        return parse(cls, d, "storage", source)

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

