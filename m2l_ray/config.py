"""The job config: one YAML file, validated before Ray starts.

Everything that changes what a job produces lives here, so that its hash (the
``config_hash`` on every row and in the manifest) identifies the output. Errors name
the key and the problem; they are raised before any cluster resource is spent.
Credentials never live here: storage credentials come from the AWS chain and API
keys from environment variables whose *names* the config holds.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from m2l_ray.errors import ConfigError

SEED_SHAPES = ("auto", "m2l", "aya_dataset", "aya_collection")
SEED_FORMATS = ("auto", "jsonl", "parquet")
ENGINE_KINDS = ("vllm", "openai")
PACKAGE_SEEDS = "package:sample"


@dataclass(frozen=True)
class SeedSource:
    """One seed input: a file, a folder or a glob, local or s3://."""

    path: str
    format: str = "auto"
    shape: str = "auto"
    task: str | None = None  # for shapes whose rows carry no task of ours (Aya Dataset)


@dataclass(frozen=True)
class SeedsConfig:
    sources: tuple[SeedSource, ...] = (SeedSource(PACKAGE_SEEDS),)
    languages: tuple[str, ...] | None = None  # None: every language found
    tasks: tuple[str, ...] | None = None  # None: every task in the taxonomy
    per_group_cap: int = 8  # seeds per (language, task): the balance knob
    max_chars: int = 4000
    min_chars: int = 2
    # pools of at least this many MB (on disk) are read on Ray Data (seed_intake); smaller
    # ones in the driver, faster than a cluster's start-up. 0: always distributed
    distributed_min_mb: float = 64.0


@dataclass(frozen=True)
class TaxonomyConfig:
    path: str | None = None  # None: the taxonomy shipped with the package
    task_evols: tuple[str, ...] | None = None
    multiturn_evols: tuple[str, ...] | None = None
    origin: str | None = None  # "m2lingual": only the multi-turn types of the paper's data


@dataclass(frozen=True)
class EvolConfig:
    """The fan-out of the M2Lingual method: evolutions per seed, and the share of
    evolved pairs grown into multi-turn conversations."""

    per_seed: int = 1  # the public dataset has ~7.5 evolved pairs per seed
    multiturn_share: float = 1.0  # the public counts imply ~0.56


@dataclass(frozen=True)
class TurnsConfig:
    min: int = 2
    max: int = 3


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 512
    evolve_max_tokens: int = 256  # a rewritten instruction is short; don't pay for rambling
    user_turn_max_tokens: int = 200
    repetition_penalty: float = 1.0
    seed: bool = True  # derive a per-request seed from (job seed, seed id, step): reproducible


@dataclass(frozen=True)
class EngineConfig:
    kind: str = "vllm"
    model: str = "smollm2-135m-instruct"
    max_model_len: int = 2048
    max_num_seqs: int = 32
    tensor_parallel_size: int = 1
    num_actors: int | None = None  # None: GPUs / tensor_parallel_size (1 on a CPU machine)
    gpu_memory_utilization: float = 0.9
    dtype: str = "auto"
    cpu_kvcache_gb: float = 2.0  # VLLM_CPU_KVCACHE_SPACE on CPU nodes
    enforce_eager: bool = False
    batch_size: int = 4  # rows per async batch; many small batches in flight per actor
    resources: Mapping[str, float] = field(default_factory=dict)  # custom Ray resources per actor
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    evol_attempts: int = 2  # evol types tried before a seed's evolution counts as failed
    stall_seconds: float = 900.0  # no request finished for this long: the stage fails (watchdog)
    start_seconds: float = 1800.0  # no engine up this long after the stage started: it fails
    max_restarts: int = 3  # engine actor restarts (a dead vLLM engine) before the stage fails
    # openai engine (see engines/openai_engine.py)
    base_url: str | None = None
    api_key_env: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # extra request fields (openai)
    openai: Mapping[str, Any] = field(default_factory=dict)  # limits, retries, cache, prices


@dataclass(frozen=True)
class OutputConfig:
    uri: str = "out/local"
    work_unit_size: int = 16  # conversations per raw object: the resume granularity
    shard_rows: int = 5000  # rows per final Parquet shard
    progress_seconds: float = 10.0


@dataclass(frozen=True)
class JobConfig:
    name: str = "m2l-job"
    seed: int = 0
    license: str = "other"  # the output's license, for its dataset card (Hugging Face id)
    seeds: SeedsConfig = field(default_factory=SeedsConfig)
    extra_languages: tuple[Mapping[str, Any], ...] = ()
    taxonomy: TaxonomyConfig = field(default_factory=TaxonomyConfig)
    evol: EvolConfig = field(default_factory=EvolConfig)
    turns: TurnsConfig = field(default_factory=TurnsConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    curation: Mapping[str, Any] = field(default_factory=dict)
    storage: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None  # the file it came from (not part of the hash)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source", None)
        return _jsonable(d)

    def hashed(self) -> dict[str, Any]:
        """What determines the output, not where or how fast it is made.

        Left out: output location, storage endpoint, progress interval, the seed reader's
        in-memory/distributed threshold, actor count and
        resources, the watchdog limits and restart bound, and the openai engine's server address, key
        variable and rate limits, so that moving a job or tuning its throughput still
        resumes the same dataset.
        """
        d = self.to_dict()
        d["output"] = {k: v for k, v in d["output"].items() if k not in ("uri", "progress_seconds")}
        d.pop("storage", None)
        d["seeds"].pop("distributed_min_mb", None)  # which reader: the same seeds either way
        for k in ("base_url", "api_key_env", "openai", "num_actors", "resources", "stall_seconds",
                  "start_seconds", "max_restarts"):
            d["engine"].pop(k, None)
        return d

    def config_hash(self) -> str:
        """Stable hash of ``hashed()``: on every row and in the manifest."""
        blob = json.dumps(self.hashed(), sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


# ---------------------------------------------------------------- loading


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> JobConfig:
    """Read a YAML job config, apply ``key.path=value`` overrides, validate."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("--config", f"file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError("(file)", f"not valid YAML: {e}", str(p)) from None
    if not isinstance(raw, dict):
        raise ConfigError("(file)", "the top level must be a mapping", str(p))
    raw = apply_overrides(raw, overrides)
    return config_from_dict(raw, source=str(p))


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``engine.sampling.max_tokens=256``: the value is parsed as YAML (numbers, lists, null)."""
    out = copy.deepcopy(dict(raw))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "an override must look like key.path=value (--set)")
        key, _, value = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(key, "empty key segment in override")
        node = out
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(key, f"'{part}' is not a mapping, can't set a key under it")
            node = nxt
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else None
    return out


_TOP_KEYS = {
    "job", "seeds", "languages", "taxonomy", "evol", "turns", "engine", "output", "curation", "storage",
}


def config_from_dict(raw: Mapping[str, Any], source: str | None = None) -> JobConfig:
    """Build and validate a JobConfig; every problem names its key."""
    r = _Reader(source)
    r.no_unknown(raw, _TOP_KEYS, "")
    job = r.mapping(raw, "job")
    r.no_unknown(job, {"name", "seed", "license"}, "job")
    name = r.typed(job, "name", str, "job", "m2l-job")
    seed = r.typed(job, "seed", int, "job", 0)
    license_id = r.typed(job, "license", str, "job", JobConfig.license)

    s = r.mapping(raw, "seeds")
    r.no_unknown(s, {"sources", "languages", "tasks", "per_group_cap", "max_chars", "min_chars",
                     "distributed_min_mb"}, "seeds")
    sources_raw = s.get("sources", [{"path": PACKAGE_SEEDS}])
    if isinstance(sources_raw, str):
        sources_raw = [sources_raw]
    if not isinstance(sources_raw, list) or not sources_raw:
        raise ConfigError("seeds.sources", "must be a non-empty list of paths or {path, shape, format}", source)
    sources = []
    for i, src in enumerate(sources_raw):
        key = f"seeds.sources[{i}]"
        if isinstance(src, str):
            src = {"path": src}
        if not isinstance(src, Mapping) or not isinstance(src.get("path"), str) or not src["path"]:
            raise ConfigError(f"{key}.path", "missing: every source needs a path", source)
        r.no_unknown(src, {"path", "format", "shape", "task"}, key)
        fmt = src.get("format", "auto")
        shape = src.get("shape", "auto")
        if fmt not in SEED_FORMATS:
            raise ConfigError(f"{key}.format", f"'{fmt}' is not one of {', '.join(SEED_FORMATS)}", source)
        if shape not in SEED_SHAPES:
            raise ConfigError(f"{key}.shape", f"'{shape}' is not one of {', '.join(SEED_SHAPES)}", source)
        sources.append(SeedSource(src["path"], fmt, shape, src.get("task")))
    seeds = SeedsConfig(
        sources=tuple(sources),
        languages=r.str_list(s, "languages", "seeds"),
        tasks=r.str_list(s, "tasks", "seeds"),
        per_group_cap=r.positive(s, "per_group_cap", "seeds", SeedsConfig.per_group_cap),
        max_chars=r.positive(s, "max_chars", "seeds", SeedsConfig.max_chars),
        min_chars=r.positive(s, "min_chars", "seeds", SeedsConfig.min_chars),
        distributed_min_mb=r.number(s, "distributed_min_mb", "seeds", SeedsConfig.distributed_min_mb),
    )
    if seeds.distributed_min_mb < 0:
        raise ConfigError("seeds.distributed_min_mb", f"must be >= 0, got {seeds.distributed_min_mb}", source)

    langs = r.mapping(raw, "languages")
    r.no_unknown(langs, {"extra"}, "languages")
    extra = langs.get("extra") or []
    if not isinstance(extra, list) or not all(isinstance(e, Mapping) for e in extra):
        raise ConfigError("languages.extra", "must be a list of {code, name, script, ...}", source)

    t = r.mapping(raw, "taxonomy")
    r.no_unknown(t, {"path", "task_evols", "multiturn_evols", "origin"}, "taxonomy")
    taxonomy = TaxonomyConfig(
        path=r.typed(t, "path", str, "taxonomy", None),
        task_evols=r.str_list(t, "task_evols", "taxonomy"),
        multiturn_evols=r.str_list(t, "multiturn_evols", "taxonomy"),
        origin=r.typed(t, "origin", str, "taxonomy", None),
    )
    if taxonomy.origin not in (None, "all", "m2lingual", "m2l-ray"):
        raise ConfigError("taxonomy.origin", f"'{taxonomy.origin}' is not one of all, m2lingual, m2l-ray",
                          source)

    ev = r.mapping(raw, "evol")
    r.no_unknown(ev, {"per_seed", "multiturn_share"}, "evol")
    evol = EvolConfig(
        per_seed=r.positive(ev, "per_seed", "evol", EvolConfig.per_seed),
        multiturn_share=float(r.number(ev, "multiturn_share", "evol", EvolConfig.multiturn_share)),
    )
    if not 0 <= evol.multiturn_share <= 1:
        raise ConfigError("evol.multiturn_share", f"must be between 0 and 1, got {evol.multiturn_share:g}",
                          source)

    tu = r.mapping(raw, "turns")
    r.no_unknown(tu, {"min", "max"}, "turns")
    turns = TurnsConfig(r.positive(tu, "min", "turns", 2), r.positive(tu, "max", "turns", 3))
    if turns.min > turns.max:
        raise ConfigError("turns.min", f"turns.min ({turns.min}) > turns.max ({turns.max})", source)
    if turns.max > 32:
        raise ConfigError("turns.max", f"{turns.max} turns is more than the limit of 32", source)

    engine = _engine(r, r.mapping(raw, "engine"))

    o = r.mapping(raw, "output")
    r.no_unknown(o, {"uri", "work_unit_size", "shard_rows", "progress_seconds"}, "output")
    output = OutputConfig(
        uri=r.typed(o, "uri", str, "output", OutputConfig.uri),
        work_unit_size=r.positive(o, "work_unit_size", "output", OutputConfig.work_unit_size),
        shard_rows=r.positive(o, "shard_rows", "output", OutputConfig.shard_rows),
        progress_seconds=float(r.number(o, "progress_seconds", "output", OutputConfig.progress_seconds)),
    )
    if not output.uri.strip():
        raise ConfigError("output.uri", "must not be empty", source)

    return JobConfig(
        name=name,
        seed=seed,
        license=license_id,
        seeds=seeds,
        extra_languages=tuple(dict(e) for e in extra),
        taxonomy=taxonomy,
        evol=evol,
        turns=turns,
        engine=engine,
        output=output,
        curation=dict(r.mapping(raw, "curation")),
        storage=dict(r.mapping(raw, "storage")),
        source=source,
    )


_ENGINE_KEYS = {
    "kind", "model", "max_model_len", "max_num_seqs", "tensor_parallel_size", "num_actors",
    "gpu_memory_utilization", "dtype", "cpu_kvcache_gb", "enforce_eager", "batch_size", "sampling",
    "evol_attempts", "stall_seconds", "start_seconds", "max_restarts", "base_url", "api_key_env", "extra", "openai", "resources",
}
_SAMPLING_KEYS = {
    "temperature", "top_p", "max_tokens", "evolve_max_tokens", "user_turn_max_tokens",
    "repetition_penalty", "seed",
}


def _engine(r: _Reader, e: Mapping[str, Any]) -> EngineConfig:
    r.no_unknown(e, _ENGINE_KEYS, "engine")
    d = EngineConfig()
    kind = r.typed(e, "kind", str, "engine", d.kind)
    if kind not in ENGINE_KINDS:
        raise ConfigError("engine.kind", f"'{kind}' is not one of {', '.join(ENGINE_KINDS)}", r.source)
    sp = r.mapping(e, "sampling", "engine.sampling")
    r.no_unknown(sp, _SAMPLING_KEYS, "engine.sampling")
    ds = SamplingConfig()
    sampling = SamplingConfig(
        temperature=float(r.number(sp, "temperature", "engine.sampling", ds.temperature)),
        top_p=float(r.number(sp, "top_p", "engine.sampling", ds.top_p)),
        max_tokens=r.positive(sp, "max_tokens", "engine.sampling", ds.max_tokens),
        evolve_max_tokens=r.positive(sp, "evolve_max_tokens", "engine.sampling", ds.evolve_max_tokens),
        user_turn_max_tokens=r.positive(
            sp, "user_turn_max_tokens", "engine.sampling", ds.user_turn_max_tokens
        ),
        repetition_penalty=float(
            r.number(sp, "repetition_penalty", "engine.sampling", ds.repetition_penalty)
        ),
        seed=r.typed(sp, "seed", bool, "engine.sampling", ds.seed),
    )
    if not 0 <= sampling.temperature <= 5:
        raise ConfigError("engine.sampling.temperature", "must be between 0 and 5", r.source)
    if not 0 < sampling.top_p <= 1:
        raise ConfigError("engine.sampling.top_p", "must be in (0, 1]", r.source)
    num_actors = e.get("num_actors")
    if num_actors is not None and num_actors != "auto":
        num_actors = r.positive(e, "num_actors", "engine", 1)
    else:
        num_actors = None
    cfg = EngineConfig(
        kind=kind,
        model=r.typed(e, "model", str, "engine", d.model),
        max_model_len=r.positive(e, "max_model_len", "engine", d.max_model_len),
        max_num_seqs=r.positive(e, "max_num_seqs", "engine", d.max_num_seqs),
        tensor_parallel_size=r.positive(e, "tensor_parallel_size", "engine", d.tensor_parallel_size),
        num_actors=num_actors,
        gpu_memory_utilization=float(
            r.number(e, "gpu_memory_utilization", "engine", d.gpu_memory_utilization)
        ),
        dtype=r.typed(e, "dtype", str, "engine", d.dtype),
        cpu_kvcache_gb=float(r.number(e, "cpu_kvcache_gb", "engine", d.cpu_kvcache_gb)),
        enforce_eager=r.typed(e, "enforce_eager", bool, "engine", d.enforce_eager),
        batch_size=r.positive(e, "batch_size", "engine", d.batch_size),
        sampling=sampling,
        evol_attempts=r.positive(e, "evol_attempts", "engine", d.evol_attempts),
        stall_seconds=float(r.number(e, "stall_seconds", "engine", d.stall_seconds)),
        start_seconds=float(r.number(e, "start_seconds", "engine", d.start_seconds)),
        max_restarts=r.typed(e, "max_restarts", int, "engine", d.max_restarts),
        base_url=r.typed(e, "base_url", str, "engine", None),
        api_key_env=r.typed(e, "api_key_env", str, "engine", None),
        extra=dict(r.mapping(e, "extra", "engine.extra")),
        openai=dict(r.mapping(e, "openai", "engine.openai")),
        resources=dict(r.mapping(e, "resources", "engine.resources")),
    )
    for k, v in cfg.resources.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise ConfigError(f"engine.resources.{k}", f"must be a positive number, got {v!r}", r.source)
    for knob in ("stall_seconds", "start_seconds"):
        if getattr(cfg, knob) <= 0:
            raise ConfigError(f"engine.{knob}", f"must be > 0 seconds, got {getattr(cfg, knob):g}", r.source)
    if cfg.max_restarts < 0:
        raise ConfigError("engine.max_restarts", f"must be >= 0, got {cfg.max_restarts}", r.source)
    if not 0 < cfg.gpu_memory_utilization <= 1:
        raise ConfigError("engine.gpu_memory_utilization", "must be in (0, 1]", r.source)
    if sampling.max_tokens >= cfg.max_model_len:
        raise ConfigError(
            "engine.sampling.max_tokens",
            f"{sampling.max_tokens} leaves no room for the prompt in max_model_len {cfg.max_model_len}",
            r.source,
        )
    for secretish in ("api_key", "key", "token", "password", "secret"):
        if secretish in cfg.extra:
            raise ConfigError(
                f"engine.extra.{secretish}",
                "secrets never go in the config; name an environment variable in engine.api_key_env",
                r.source,
            )
    if cfg.kind == "openai" and not cfg.base_url:
        raise ConfigError("engine.base_url", "required when engine.kind is openai", r.source)
    return cfg


class _Reader:
    """Typed access to a raw mapping; each failure names the full key path."""

    def __init__(self, source: str | None) -> None:
        self.source = source

    def mapping(self, d: Mapping[str, Any], key: str, path: str | None = None) -> Mapping[str, Any]:
        v = d.get(key)
        if v is None:
            return {}
        if not isinstance(v, Mapping):
            raise ConfigError(path or key, f"must be a mapping, got {type(v).__name__}", self.source)
        return v

    def no_unknown(self, d: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
        for k in d:
            if k not in allowed:
                key = f"{prefix}.{k}" if prefix else str(k)
                hint = ", ".join(sorted(allowed))
                raise ConfigError(key, f"unknown key (allowed here: {hint})", self.source)

    def typed(self, d: Mapping[str, Any], key: str, typ: type, prefix: str, default: Any) -> Any:
        v = d.get(key, default)
        if v is None:
            return default
        if typ is int and isinstance(v, bool) or not isinstance(v, typ):
            raise ConfigError(
                f"{prefix}.{key}", f"must be {typ.__name__}, got {v!r}", self.source
            )
        return v

    def number(self, d: Mapping[str, Any], key: str, prefix: str, default: float) -> float:
        v = d.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{prefix}.{key}", f"must be a number, got {v!r}", self.source)
        return v

    def positive(self, d: Mapping[str, Any], key: str, prefix: str, default: int) -> int:
        v = self.typed(d, key, int, prefix, default)
        if v < 1:
            raise ConfigError(f"{prefix}.{key}", f"must be >= 1, got {v}", self.source)
        return v

    def str_list(self, d: Mapping[str, Any], key: str, prefix: str) -> tuple[str, ...] | None:
        v = d.get(key)
        if v is None or v == "all":
            return None
        if isinstance(v, str):
            v = [x.strip() for x in v.split(",") if x.strip()]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v) or not v:
            raise ConfigError(f"{prefix}.{key}", "must be a non-empty list of strings or 'all'", self.source)
        return tuple(v)
