"""Everything a job needs besides its config, built and checked before Ray starts.

``prepare`` turns a parsed config into registry, taxonomy and curation settings and
checks what the YAML parser can't: unknown language codes and tasks, unreadable
seed paths (the engine's own checks, a model or server that isn't there, are its
spec's ``preflight``). All of it runs on the driver in seconds, so a typo fails the
job before a cluster spends money on it.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m2l_ray.config import PACKAGE_SEEDS, JobConfig
from m2l_ray.engines.base import Engine
from m2l_ray.errors import ConfigError
from m2l_ray.languages import LanguageRegistry
from m2l_ray.prompts import prompt_book
from m2l_ray.synthesis import JobInfo, Synthesizer
from m2l_ray.taxonomy import Taxonomy


@dataclass
class JobContext:
    cfg: JobConfig
    registry: LanguageRegistry
    taxonomy: Taxonomy
    curation: Any  # CurationConfig
    storage: Any  # StorageOptions
    task_ids: frozenset[str] = frozenset()  # every task the taxonomy knows (seeds are checked against it)
    warnings: tuple[str, ...] = ()


def load_registry(cfg: JobConfig) -> LanguageRegistry:
    return LanguageRegistry.load(extra=cfg.extra_languages, source=cfg.source)


def load_taxonomy(cfg: JobConfig, base: Taxonomy | None = None) -> Taxonomy:
    t = cfg.taxonomy
    base = base or Taxonomy.load(t.path)
    try:
        origin = None if t.origin in (None, "all") else t.origin
        return base.restrict(cfg.seeds.tasks, t.task_evols, t.multiturn_evols, origin=origin)
    except ValueError as e:
        raise ConfigError("taxonomy / seeds.tasks", str(e), cfg.source) from None


def prepare(cfg: JobConfig) -> JobContext:
    """Load and cross-check; raises ConfigError naming the key on the first problem."""
    from m2l_ray.curation.config import CurationConfig
    from m2l_ray.io import StorageOptions

    registry = load_registry(cfg)
    if cfg.taxonomy.path and not Path(cfg.taxonomy.path).is_dir():
        raise ConfigError("taxonomy.path", f"not a directory: {cfg.taxonomy.path}", cfg.source)
    full = Taxonomy.load(cfg.taxonomy.path)
    taxonomy = load_taxonomy(cfg, full)
    if cfg.seeds.languages:
        for i, code in enumerate(cfg.seeds.languages):
            if registry.resolve(code) is None:
                close = ", ".join(c for c in registry.codes() if c[:1] == code[:1])[:120]
                raise ConfigError(
                    f"seeds.languages[{i}]",
                    f"unknown language code '{code}' (not in the registry nor languages.extra; "
                    f"codes starting alike: {close or 'none'})",
                    cfg.source,
                )
    for i, src in enumerate(cfg.seeds.sources):
        if src.path == PACKAGE_SEEDS or src.path.startswith("s3://"):
            continue
        if not (Path(src.path).exists() or glob.glob(src.path)):
            raise ConfigError(f"seeds.sources[{i}].path", f"no such file, folder or glob: {src.path}", cfg.source)
        if src.task is not None and src.task not in taxonomy.tasks:
            raise ConfigError(f"seeds.sources[{i}].task", f"unknown task '{src.task}'", cfg.source)
    curation = CurationConfig.from_dict(cfg.curation, source=cfg.source)
    # a language the LID model can't identify needs an explicit policy, named here; with
    # no language list the check runs on the languages found in the seeds (check_seed_languages)
    warnings = curation.validate_languages(registry, cfg.seeds.languages) if cfg.seeds.languages else []
    storage = StorageOptions.from_dict(cfg.storage, source=cfg.source)
    return JobContext(
        cfg, registry, taxonomy, curation, storage, frozenset(full.tasks), tuple(warnings)
    )


def check_seed_languages(ctx: JobContext, codes: set[str]) -> list[str]:
    """The LID coverage check on the languages the selected seeds actually have."""
    return ctx.curation.validate_languages(ctx.registry, sorted(codes))


def job_info(cfg: JobConfig) -> JobInfo:
    return JobInfo(
        config_hash=cfg.config_hash(),
        job_seed=cfg.seed,
        model=cfg.engine.model,
        engine=cfg.engine.kind,
        sampling=cfg.engine.sampling,
    )


def build_synthesizer(cfg: JobConfig, engine: Engine) -> Synthesizer:
    """Inside an actor: the same registry and taxonomy the driver validated."""
    return Synthesizer(engine, load_registry(cfg), load_taxonomy(cfg), prompt_book(), job_info(cfg))
