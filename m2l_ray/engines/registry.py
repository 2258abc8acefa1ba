"""The engine kinds: one ``EngineSpec`` each, the only place the pipeline learns about them.

Everything that differs between engines is on its spec, so the config, the CLI, the
pipeline and the actor placement never branch on ``engine.kind``:

* ``config``: the class that reads its ``engine:`` section (its own keys, ranges and
  hash exclusions; ``config.EngineConfig`` when it has none of its own);
* ``build``: the engine, inside each engine actor;
* ``preflight``: on the driver before Ray fans out (``m2l run`` and ``m2l validate``),
  so a wrong model path, key or server is one clear error, not a failed cluster job;
* ``in_flight``: requests one actor keeps in flight, which sizes the blocks and the
  tasks in flight per actor (vLLM: its batch, ``max_num_seqs``);
* ``remote``: the model runs elsewhere (an API server), so an actor needs one CPU and
  never a GPU;
* ``pricing``: what tokens cost, for the job's usage summary (None: no price).

A new engine is a module with its spec, added to ``_builtin_specs`` (or registered by
``register_engine`` from outside the package).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from m2l_ray.config import EngineConfig
from m2l_ray.errors import ConfigError

if TYPE_CHECKING:
    from m2l_ray.config import JobConfig
    from m2l_ray.engines.base import Engine


class Pricing(Protocol):
    """What ``usage.usage_summary`` needs to put a cost on tokens."""

    price_per_1k_prompt_tokens: float | None
    price_per_1k_completion_tokens: float | None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None: ...


def _no_preflight(job: JobConfig) -> None:
    return None


def _batch(job: JobConfig) -> int:
    return job.engine.max_num_seqs


def _no_price(job: JobConfig) -> Pricing | None:
    return None


@dataclass(frozen=True)
class EngineSpec:
    """One engine kind (see the module docstring for what each part is for)."""

    kind: str
    build: Callable[[JobConfig], Engine]
    config: type[EngineConfig] = EngineConfig
    preflight: Callable[[JobConfig], None] = _no_preflight
    in_flight: Callable[[JobConfig], int] = _batch
    remote: bool = False
    pricing: Callable[[JobConfig], Pricing | None] = _no_price


_SPECS: dict[str, EngineSpec] = {}


def _builtin_specs() -> list[EngineSpec]:
    from m2l_ray.engines.openai_engine import SPEC as OPENAI
    from m2l_ray.engines.vllm_engine import SPEC as VLLM

    return [VLLM, OPENAI]


def _specs() -> dict[str, EngineSpec]:
    if not _SPECS:
        for spec in _builtin_specs():
            _SPECS.setdefault(spec.kind, spec)
    return _SPECS


def register_engine(spec: EngineSpec, replace: bool = False) -> EngineSpec:
    """Add an engine kind: ``engine.kind: <spec.kind>`` is then accepted and built."""
    specs = _specs()
    if spec.kind in specs and not replace and specs[spec.kind] != spec:
        raise ValueError(f"engine kind {spec.kind!r} is already registered")
    specs[spec.kind] = spec
    return spec


def unregister_engine(kind: str) -> None:
    _specs().pop(kind, None)


def engine_kinds() -> tuple[str, ...]:
    return tuple(_specs())


def engine_spec(kind: Any, source: str | None = None) -> EngineSpec:
    """The spec of ``engine.kind``; ConfigError naming the key for a kind nobody registered."""
    specs = _specs()
    if not isinstance(kind, str) or kind not in specs:
        raise ConfigError("engine.kind", f"{kind!r} is not one of {', '.join(specs)}", source)
    return specs[kind]


def build_engine(job: JobConfig) -> Engine:
    """The engine a config names (inside an engine actor); every kind serves the same Synthesizer."""
    return engine_spec(job.engine.kind, job.source).build(job)
