"""The job config: one YAML file, validated before Ray starts.

Everything that changes what a job produces lives here, so that its hash (the
``config_hash`` on every row and in the manifest) identifies the output. Errors name
the key and the problem; they are raised before any cluster resource is spent.
Credentials never live here: storage credentials come from the AWS chain and API
keys from environment variables whose *names* the config holds.

Each section is a dataclass read by the one validator (``validation.parse``): types
from the annotations, ranges and choices from ``knob`` metadata, and ``hashed=False``
on what only says where or how fast a job runs. The ``engine:`` section is read by the
config class of its kind (``engines/registry.py``).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from m2l_ray.errors import ConfigError
from m2l_ray.seeds.shapes import SHAPE_CHOICES
from m2l_ray.validation import hashed, knob, need, parse, plain

SEED_SHAPES = SHAPE_CHOICES  # "auto" + every shape registered in seeds/shapes.py (read at each use)
SEED_FORMATS = ("auto", "jsonl", "parquet")
PACKAGE_SEEDS = "package:sample"
TAXONOMY_ORIGINS = ("all", "m2lingual", "m2l-ray")


def _sources(value: Any) -> Any:
    """``sources: path`` and ``- path`` for ``- {path: path}``."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list of paths or {path, shape, format}")
    return [{"path": v} if isinstance(v, str) else v for v in value]


def _names(value: Any) -> Any:
    """``all`` for every one (None), and ``"en, fr"`` for ``[en, fr]``."""
    if value == "all":
        return None
    if isinstance(value, str):
        value = [x.strip() for x in value.split(",") if x.strip()]
    if not isinstance(value, list) or not value:
        raise ValueError("must be a non-empty list of strings or 'all'")
    return value


def _auto(value: Any) -> Any:
    return None if value == "auto" else value


@dataclass(frozen=True)
class SeedSource:
    """One seed input: a file, a folder or a glob, local or s3://."""

    path: str
    format: str = knob("auto", choices=SEED_FORMATS)
    shape: str = knob("auto", choices=SEED_SHAPES)
    task: str | None = None  # for shapes whose rows carry no task of ours (Aya Dataset)


@dataclass(frozen=True)
class SeedsConfig:
    sources: tuple[SeedSource, ...] = knob((SeedSource(PACKAGE_SEEDS),), convert=_sources)
    languages: tuple[str, ...] | None = knob(None, convert=_names)  # None: every language found
    tasks: tuple[str, ...] | None = knob(None, convert=_names)  # None: every task in the taxonomy
    per_group_cap: int = knob(8, ge=1)  # seeds per (language, task): the balance knob
    max_chars: int = knob(4000, ge=1)
    min_chars: int = knob(2, ge=1)
    # pools of at least this many MB (on disk) are read on Ray Data (seed_intake); smaller
    # ones in the driver, faster than a cluster's start-up. 0: always distributed. Which
    # reader: the same seeds either way, so not hashed
    distributed_min_mb: float = knob(64.0, ge=0, hashed=False)


@dataclass(frozen=True)
class TaxonomyConfig:
    path: str | None = None  # None: the taxonomy shipped with the package
    task_evols: tuple[str, ...] | None = knob(None, convert=_names)
    multiturn_evols: tuple[str, ...] | None = knob(None, convert=_names)
    # "m2lingual": only the multi-turn types of the paper's data
    origin: str | None = knob(None, choices=TAXONOMY_ORIGINS)


@dataclass(frozen=True)
class EvolConfig:
    """The fan-out of the M2Lingual method: evolutions per seed, and the share of
    evolved pairs grown into multi-turn conversations."""

    per_seed: int = knob(1, ge=1)  # the public dataset has ~7.5 evolved pairs per seed
    multiturn_share: float = knob(1.0, ge=0, le=1)  # the public counts imply ~0.56


@dataclass(frozen=True)
class TurnsConfig:
    min: int = knob(2, ge=1)
    max: int = knob(3, ge=1, le=32)

    def check(self, prefix: str, source: str | None) -> None:
        need(self.min <= self.max, f"{prefix}.min", f"turns.min ({self.min}) > turns.max ({self.max})", source)


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = knob(0.7, ge=0, le=5)
    top_p: float = knob(0.95, gt=0, le=1)
    max_tokens: int = knob(512, ge=1)
    evolve_max_tokens: int = knob(256, ge=1)  # a rewritten instruction is short; don't pay for rambling
    user_turn_max_tokens: int = knob(200, ge=1)
    repetition_penalty: float = 1.0
    seed: bool = True  # derive a per-request seed from (job seed, seed id, step): reproducible


#: ``engine.extra`` keys that look like a credential
SECRET_KEYS = ("api_key", "key", "token", "password", "secret")


@dataclass(frozen=True)
class EngineConfig:
    """``engine:``, the knobs of every engine kind; a kind's own knobs are on its subclass
    (``EngineSpec.config``), e.g. the openai engine's server, key variable and limits.

    The model-serving knobs (max_num_seqs ... enforce_eager) and ``extra`` mean something
    to one kind only, yet every kind accepts and hashes them, as before kinds had classes
    of their own: a vllm job switched to a server with ``--set engine.kind=openai`` still
    loads, and the outputs made before keep their config hash.
    Left out of the hash: actor count and resources, the watchdog limits and restart
    bound, so that tuning a job's throughput still resumes the same dataset.
    """

    kind: str = "vllm"
    model: str = "smollm2-135m-instruct"
    max_model_len: int = knob(2048, ge=1)
    max_num_seqs: int = knob(32, ge=1)
    tensor_parallel_size: int = knob(1, ge=1)
    # None: GPUs / tensor_parallel_size (1 on a CPU machine)
    num_actors: int | None = knob(None, ge=1, convert=_auto, hashed=False)
    gpu_memory_utilization: float = knob(0.9, gt=0, le=1)
    dtype: str = "auto"
    cpu_kvcache_gb: float = 2.0  # the KV cache on CPU nodes (vLLM kv_cache_memory_bytes)
    enforce_eager: bool = False
    batch_size: int = knob(4, ge=1)  # rows per async batch; many small batches in flight per actor
    # custom Ray resources per actor
    resources: Mapping[str, float] = knob(default_factory=dict, gt=0, hashed=False)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    evol_attempts: int = knob(2, ge=1)  # evol types tried before a seed's evolution counts as failed
    # no request finished for this long: the stage fails (watchdog)
    stall_seconds: float = knob(900.0, gt=0, hashed=False)
    # no engine up this long after the stage started: it fails
    start_seconds: float = knob(1800.0, gt=0, hashed=False)
    # engine actor restarts (a dead vLLM engine) before the stage fails
    max_restarts: int = knob(3, ge=0, hashed=False)
    extra: Mapping[str, Any] = field(default_factory=dict)  # extra request fields (openai)

    @classmethod
    def variant(cls, raw: Mapping[str, Any], prefix: str, source: str | None) -> type:
        """The config class of the section's ``kind``: its kind-specific keys are allowed."""
        from m2l_ray.engines.registry import engine_spec

        kind = raw.get("kind")
        return engine_spec(cls.kind if kind is None else kind, source).config

    def check(self, prefix: str, source: str | None) -> None:
        s = self.sampling
        need(s.max_tokens < self.max_model_len, f"{prefix}.sampling.max_tokens",
             f"{s.max_tokens} leaves no room for the prompt in max_model_len {self.max_model_len}", source)
        for secretish in SECRET_KEYS:
            need(secretish not in self.extra, f"{prefix}.extra.{secretish}",
                 "secrets never go in the config; name an environment variable in engine.api_key_env",
                 source)


def _writer_names() -> list[str]:
    from m2l_ray.io.writers import writers

    return writers()


@dataclass(frozen=True)
class OutputConfig:
    uri: str = knob("out/local", hashed=False)  # where, not what: moving a job resumes it
    work_unit_size: int = knob(16, ge=1)  # conversations per raw object: the resume granularity
    shard_rows: int = knob(5000, ge=1)  # rows per final shard
    # the final shards' writer (io/writers.py): how the rows are stored, not which rows
    format: str = knob("parquet", choices=_writer_names, hashed=False)
    progress_seconds: float = knob(10.0, hashed=False)


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
    storage: Mapping[str, Any] = knob(default_factory=dict, hashed=False)  # the endpoint: where
    source: str | None = knob(None, hashed=False)  # the file it came from

    def to_dict(self) -> dict[str, Any]:
        d = plain(self)
        d.pop("source", None)
        return d

    def hashed(self) -> dict[str, Any]:
        """What determines the output, not where or how fast it is made: every field but
        those whose knob says ``hashed=False`` (see each section)."""
        return hashed(self)

    def config_hash(self) -> str:
        """Stable hash of ``hashed()``: on every row and in the manifest."""
        blob = json.dumps(self.hashed(), sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


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


@dataclass(frozen=True)
class _JobSection:
    name: str = JobConfig.name
    seed: int = JobConfig.seed
    license: str = JobConfig.license


@dataclass(frozen=True)
class _LanguagesSection:
    extra: tuple[Mapping[str, Any], ...] = ()  # {code, name, script, ...} (languages.py checks them)


@dataclass(frozen=True)
class _JobFile:
    """The YAML's own layout (``job.name``, ``languages.extra``), read into a JobConfig."""

    job: _JobSection = field(default_factory=_JobSection)
    seeds: SeedsConfig = field(default_factory=SeedsConfig)
    languages: _LanguagesSection = field(default_factory=_LanguagesSection)
    taxonomy: TaxonomyConfig = field(default_factory=TaxonomyConfig)
    evol: EvolConfig = field(default_factory=EvolConfig)
    turns: TurnsConfig = field(default_factory=TurnsConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    curation: Mapping[str, Any] = field(default_factory=dict)  # read by curation/config.py
    storage: Mapping[str, Any] = field(default_factory=dict)  # read by storage.StorageOptions


def config_from_dict(raw: Mapping[str, Any], source: str | None = None) -> JobConfig:
    """Build and validate a JobConfig; every problem names its key."""
    f = parse(_JobFile, raw, "", source)
    return JobConfig(
        name=f.job.name,
        seed=f.job.seed,
        license=f.job.license,
        seeds=f.seeds,
        extra_languages=tuple(dict(e) for e in f.languages.extra),
        taxonomy=f.taxonomy,
        evol=f.evol,
        turns=f.turns,
        engine=f.engine,
        output=f.output,
        curation=dict(f.curation),
        storage=dict(f.storage),
        source=source,
    )
