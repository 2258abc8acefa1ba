"""What a rerun may reuse: raw units made by this config for this plan, and nothing else.

A run killed part-way leaves ``raw/unit-NNNNN.parquet`` objects; the next run on the
same ``output.uri`` skips them. That is only honest if each of them was made by the
same config and holds exactly the items this plan puts in that unit: otherwise the
manifest would name one config hash over rows made by two. So every unit is checked
(two small columns of it: ``key`` and ``config_hash``) before any engine starts, and
``config.json`` beside raw/ keeps the config that made them, so that a refusal can
name the keys that differ.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from m2l_ray.config import JobConfig
from m2l_ray.errors import M2LError
from m2l_ray.layout import CONFIG_KEY, RAW_PREFIX, unit_key, unit_of
from m2l_ray.plan import PlannedConversation


def raw_units(store: Any) -> list[int]:
    return sorted(u for k in store.list(RAW_PREFIX) if (u := unit_of(k)) is not None)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"engine": {"sampling": {"temperature": 0.7}}}`` -> ``{"engine.sampling.temperature": 0.7}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 8) -> list[str]:
    """``key (old -> new)`` for every config key whose value differs, at most ``limit``."""
    a, b = flatten(old), flatten(new)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    shown = [f"{k} ({json.dumps(a.get(k), ensure_ascii=False)} -> {json.dumps(b.get(k), ensure_ascii=False)})"
             for k in keys[:limit]]
    return shown + ([f"... {len(keys) - limit} more"] if len(keys) > limit else [])


def _refuse(store: Any, what: str) -> M2LError:
    return M2LError(
        f"{store.uri}: {what}. Nothing was generated. Either use a new output.uri, or rerun "
        "with --restart to discard this output's unfinished raw units and start over."
    )


def reusable_units(
    store: Any, cfg: JobConfig, units: Mapping[int, Sequence[PlannedConversation]], restart: bool = False
) -> set[int]:
    """The raw units a rerun may skip; raises (before any engine starts) when raw/ holds
    units of another config or another plan, unless ``restart`` discards them first."""
    found = raw_units(store)
    if restart and (found or store.exists(CONFIG_KEY)):
        for u in found:
            store.delete(unit_key(u))
        if store.exists(CONFIG_KEY):
            store.delete(CONFIG_KEY)
        found = []
    current = cfg.hashed()
    config_hash = cfg.config_hash()
    if store.exists(CONFIG_KEY):
        recorded = store.get_json(CONFIG_KEY)
        if recorded.get("config_hash") != config_hash:
            diff = config_diff(recorded.get("config", {}), current)
            raise _refuse(store, f"raw/ holds {len(found)} work unit(s) made with another config "
                                 f"({recorded.get('config_hash')}; this run is {config_hash}); it differs in "
                                 + ", ".join(diff or ["keys not recorded"]))
    for u in found:
        if u not in units:
            raise _refuse(store, f"raw/ holds unit {u}, which this plan doesn't have (another job, "
                                 "or the seed files changed)")
        t = store.read_parquet(unit_key(u), columns=["key", "config_hash"])
        hashes = set(t.column("config_hash").to_pylist())
        if hashes != {config_hash}:
            raise _refuse(store, f"{unit_key(u)} was made with config {sorted(hashes)[0]} "
                                 f"(this run is {config_hash})")
        if sorted(t.column("key").to_pylist()) != sorted(p.key for p in units[u]):
            raise _refuse(store, f"{unit_key(u)} holds other items than this plan's unit {u} "
                                 "(the seed files or the selection changed)")
    if not store.exists(CONFIG_KEY):
        store.put_json(CONFIG_KEY, {"config_hash": config_hash, "config": current})
    return set(found)
