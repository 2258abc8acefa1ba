"""The openai engine's config: its ``engine:`` keys, its limits and its prices.

``OpenAIEngineConfig`` is the ``engine:`` section when ``engine.kind`` is openai: the
server's address, the *name* of the environment variable holding the key (never the
key), and ``engine.openai`` (``OpenAISettings``): limits, retries, cache and prices.
None of these is in the config hash: moving a job to another server or tuning its
rate still resumes the same dataset.

Job-wide limits are divided across the job's actors statically (``per_actor``): no
extra round trip per request, no single limiter actor to lose, no permits leaked by a
dead actor; the price is that an idle actor's share is not lent to a busy one (only
at a job's tail).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from m2l_ray.config import EngineConfig, JobConfig
from m2l_ray.errors import ConfigError, M2LError
from m2l_ray.validation import knob, need, parse

#: Body fields the engine owns; setting them in engine.extra would break the protocol.
RESERVED_EXTRA = frozenset({"model", "messages", "stream", "n", "api_key", "key", "token"})


@dataclass(frozen=True)
class OpenAISettings:
    """``engine.openai`` in the job config: limits, retries, cache, prices."""

    max_in_flight: int = knob(32, ge=1)  # per actor
    job_max_in_flight: int | None = knob(None, ge=1)  # across the job, divided across actors
    requests_per_minute: float | None = knob(None, gt=0)  # across the job
    tokens_per_minute: float | None = knob(None, gt=0)  # across the job (prompt + completion)
    timeout_seconds: float = knob(60.0, gt=0)  # per request, whole exchange
    max_retries: int = knob(6, ge=0)  # attempts after the first
    backoff_base: float = knob(1.0, ge=0)  # seconds, doubled per retry, jittered
    backoff_max: float = knob(60.0, ge=0)
    # a longer Retry-After fails the request instead of waiting
    max_retry_after: float = knob(600.0, ge=0)
    cache: bool = True
    cache_uri: str | None = None  # default: <output.uri>/cache/requests
    price_per_1k_prompt_tokens: float | None = knob(None, ge=0)
    price_per_1k_completion_tokens: float | None = knob(None, ge=0)
    # or max_completion_tokens (newer OpenAI models)
    max_tokens_field: str = knob("max_tokens", choices=("max_tokens", "max_completion_tokens"))

    @classmethod
    def from_dict(cls, d: Any, source: str | None = None) -> OpenAISettings:
        """``engine.openai`` alone (the job config reads it as part of ``engine:``)."""
        return parse(cls, d, "engine.openai", source)

    def check(self, prefix: str, source: str | None) -> None:
        need(self.backoff_max >= self.backoff_base, f"{prefix}.backoff_max", "must be >= backoff_base", source)

    def per_actor(self, actors: int, source: str | None = None) -> tuple[int, float | None, float | None]:
        """(in-flight, rpm, tpm) for one of ``actors`` actors; job-wide bounds split evenly.

        Floor division for requests in flight keeps the sum across actors within the job
        bound; a bound smaller than the number of actors can't be honoured and is an error.
        """
        in_flight = self.max_in_flight
        if self.job_max_in_flight is not None:
            if self.job_max_in_flight < actors:
                raise ConfigError(
                    "engine.openai.job_max_in_flight",
                    f"{self.job_max_in_flight} is fewer than the {actors} engine actors; "
                    "raise it or lower engine.num_actors",
                    source,
                )
            in_flight = min(in_flight, self.job_max_in_flight // actors)
        rpm = self.requests_per_minute / actors if self.requests_per_minute else None
        tpm = self.tokens_per_minute / actors if self.tokens_per_minute else None
        return in_flight, rpm, tpm

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Price of the tokens, or None when no price is configured."""
        if self.price_per_1k_prompt_tokens is None and self.price_per_1k_completion_tokens is None:
            return None
        return (
            prompt_tokens / 1000 * (self.price_per_1k_prompt_tokens or 0.0)
            + completion_tokens / 1000 * (self.price_per_1k_completion_tokens or 0.0)
        )


@dataclass(frozen=True)
class OpenAIEngineConfig(EngineConfig):
    """``engine:`` for ``kind: openai``: the base knobs plus the server and its settings."""

    kind: str = "openai"
    base_url: str | None = knob(None, hashed=False)
    api_key_env: str | None = knob(None, hashed=False)  # the variable's name, never the key
    openai: OpenAISettings = knob(default_factory=OpenAISettings, hashed=False)

    def check(self, prefix: str, source: str | None) -> None:
        super().check(prefix, source)
        need(bool(self.base_url), f"{prefix}.base_url", "required when engine.kind is openai", source)
        for k in self.extra:
            need(k not in RESERVED_EXTRA, f"{prefix}.extra.{k}",
                 "set by the engine; it can't be an extra request field", source)

    def api_root(self) -> str:
        return (self.base_url or "").rstrip("/")

    def api_key(self) -> str | None:
        """The key from the environment variable the config names; None when none is named."""
        if not self.api_key_env:
            return None
        value = os.environ.get(self.api_key_env, "")
        if not value.strip():
            raise M2LError(
                f"engine.api_key_env names ${self.api_key_env}, but that environment variable is "
                "unset or empty; export it (on the driver and on every Ray node, e.g. via the "
                "job's runtime_env env_vars) or remove engine.api_key_env for a server without auth"
            )
        return value.strip()


def settings_of(job: JobConfig) -> OpenAISettings:
    return openai_config(job).openai


def openai_config(job: JobConfig) -> OpenAIEngineConfig:
    """The engine section of an openai job (its config class, from the registry)."""
    assert isinstance(job.engine, OpenAIEngineConfig), type(job.engine)
    return job.engine


def actor_count(job: JobConfig) -> int:
    """Engine actors of an ``openai`` job: ``engine.num_actors`` or 1 (no GPUs involved).

    The pipeline sizes its actor pool with this too (placement.py, ``remote``): the
    job-wide limits are split by this number.
    """
    return job.engine.num_actors or 1


def in_flight_per_actor(job: JobConfig) -> int:
    """Requests one actor keeps in flight: what the pipeline sizes its blocks by (in place
    of engine.max_num_seqs, which only means something to an in-process vLLM)."""
    return settings_of(job).per_actor(actor_count(job), job.source)[0]
