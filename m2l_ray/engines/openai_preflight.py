"""The openai engine's preflight: settings, key variable, key, model and server, checked once
on the driver before Ray fans out, so each of them is one clear message instead of every
row of the job failing. The key itself is never logged or put in a message.
"""

from __future__ import annotations

from m2l_ray.config import JobConfig
from m2l_ray.engines.openai_http import error_message, redact
from m2l_ray.engines.openai_settings import actor_count, openai_config
from m2l_ray.errors import ConfigError, M2LError


def preflight(job: JobConfig, timeout: float = 15.0) -> None:
    """GET {base_url}/models is free on every OpenAI-compatible server we know and needs the
    same key as a completion, so it tells a rejected key (401/403) and an unknown model
    apart from an unreachable server, without spending a token.
    """
    import httpx

    cfg = openai_config(job)
    cfg.openai.per_actor(actor_count(job), job.source)
    url = cfg.api_root()
    if not url.startswith(("http://", "https://")):
        raise ConfigError("engine.base_url", f"must start with http:// or https://, got {url!r}", job.source)
    key = cfg.api_key()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        resp = httpx.get(f"{url}/models", headers=headers, timeout=timeout)
    except httpx.HTTPError as e:
        raise M2LError(
            f"cannot reach the OpenAI-compatible server at {url}: "
            f"{redact(f'{type(e).__name__}: {e}', key)}; check engine.base_url and that it is up"
        ) from None
    if resp.status_code in (401, 403):
        if key:
            raise M2LError(
                f"invalid API key (from ${cfg.api_key_env}): {url}/models answered HTTP "
                f"{resp.status_code} ({redact(error_message(resp.text), key)})"
            )
        raise M2LError(
            f"{url} requires an API key (HTTP {resp.status_code}); put it in an environment "
            "variable and name that variable in engine.api_key_env"
        )
    if resp.status_code == 404:
        hint = "" if url.endswith("/v1") else f" (did you mean {url}/v1?)"
        raise M2LError(f"{url}/models not found (HTTP 404): engine.base_url must be the API root{hint}")
    if resp.status_code >= 400:
        raise M2LError(
            f"{url}/models answered HTTP {resp.status_code}: {redact(error_message(resp.text), key)}"
        )
    try:
        models = [str(m["id"]) for m in resp.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise M2LError(f"{url}/models did not return an OpenAI model list: {resp.text[:200]!r}") from None
    if cfg.model not in models:
        shown = ", ".join(sorted(models)[:30]) + (" ..." if len(models) > 30 else "")
        raise ConfigError(
            "engine.model",
            f"'{cfg.model}' is not served at {url}; available: {shown or '(none)'}",
            job.source,
        )
