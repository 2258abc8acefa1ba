"""Quality heuristics on the turns of one conversation, each with its own reason code.

They catch what generation leaves behind when a step half-fails: empty or cut
turns, an answer stuck in a loop, a refusal taken as the next user turn, template
scaffolding ("#Rewritten Prompt#", "{seed}") copied into the text, a turn repeated
verbatim. Every check is a few string operations per turn, so they run on every
row even when an earlier check already failed (the per-filter pass rates in the
stats count each filter on its own).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from m2l_ray.curation.config import ROLES, HeuristicsConfig
from m2l_ray.curation.textnorm import collapse

#: Reason codes in the order a conversation's drop reason is chosen.
REASONS = (
    "malformed_conversation",
    "empty_turn",
    "turn_too_short",
    "turn_too_long",
    "template_leftover",
    "refusal",
    "repeated_ngrams",
    "duplicate_turn",
)

#: Chat-template tokens and role labels that must never reach the data set.
DEFAULT_TEMPLATE_PATTERNS = (
    r"<\|(?:im_start|im_end|eot_id|start_header_id|end_header_id|endoftext|assistant|user|"
    r"system|end)\|>",
    r"\[/?INST\]",
    r"<</?SYS>>",
    r"</s>|<s>",
    r"(?im)^\s*(?:###\s*)?(?:user|assistant|human|gpt)\s*:\s*$",
)

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class HeurPlan:
    """Per-language limits (config defaults with the language's overrides applied)."""

    min_chars: dict[str, int]
    max_chars: dict[str, int]
    max_repeat_ratio: float
    repeat_min_ngrams: int
    char_segmented: bool
    refusals: tuple[str, ...]  # lowercase, NFC


def build_plan(cfg: HeuristicsConfig, lang: Any) -> HeurPlan:
    """The heuristics plan of one language (``lang`` None: defaults, English refusals)."""
    ov = cfg.overrides.get(lang.code, {}) if lang is not None else {}
    min_chars = {**cfg.min_chars, **ov.get("min_chars", {})}
    max_chars = {**cfg.max_chars, **ov.get("max_chars", {})}
    refusals = tuple(lang.refusals) if lang is not None else ()
    extra = tuple(unicodedata.normalize("NFC", p).lower() for p in cfg.extra_refusals)
    return HeurPlan(
        min_chars=min_chars,
        max_chars=max_chars,
        max_repeat_ratio=float(ov.get("max_repeat_ratio", cfg.max_repeat_ratio)),
        repeat_min_ngrams=int(ov.get("repeat_min_ngrams", cfg.repeat_min_ngrams)),
        char_segmented=bool(lang is not None and lang.segmentation == "char"),
        refusals=tuple(dict.fromkeys(refusals + extra)),
    )


def default_markers() -> tuple[str, ...]:
    """Template scaffolding the generator's own prompts use (prompts.yaml leak_markers)."""
    try:
        from m2l_ray.prompts import prompt_book

        return tuple(m.lower() for m in prompt_book().leak_markers)
    except Exception:  # the prompt book is optional for stand-alone curation
        return ("#given prompt#", "#rewritten prompt#", "{seed}", "{language}")


@functools.cache
def _compiled(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p) for p in patterns)


def repeat_ratio(text: str, char_segmented: bool, n_word: int, n_char: int) -> tuple[float, int]:
    """(share of n-grams that repeat an earlier one, number of n-grams)."""
    if char_segmented:
        units: Sequence[str] = "".join(text.split()).lower()
        n = n_char
    else:
        units = _WORD.findall(text.lower())
        n = n_word
    total = len(units) - n + 1
    if total <= 0:
        return 0.0, 0
    grams = {tuple(units[i : i + n]) if not char_segmented else units[i : i + n]
             for i in range(total)}
    return 1.0 - len(grams) / total, total


def check_conversation(
    turns: Sequence[tuple[str, str]],
    plan: HeurPlan,
    cfg: HeuristicsConfig,
    markers: tuple[str, ...],
) -> list[tuple[str, int | None]]:
    """All (reason, turn index) problems of one conversation, in turn order."""
    if not cfg.enabled:
        return []
    problems: list[tuple[str, int | None]] = []
    roles = [r for r, _ in turns if r != "system"]
    if not roles or roles[0] != "user" or roles[-1] != "assistant" or any(
        r not in ROLES for r in roles
    ) or any(a == b for a, b in zip(roles, roles[1:], strict=False)):
        bad = next((i for i, (r, _) in enumerate(turns) if r not in ROLES + ("system",)), None)
        problems.append(("malformed_conversation", bad))
    patterns = _compiled(cfg.template_patterns if cfg.template_patterns is not None
                         else DEFAULT_TEMPLATE_PATTERNS)
    seen: dict[str, int] = {}
    for i, (role, content) in enumerate(turns):
        if role == "system":
            continue
        stripped = content.strip()
        if not stripped:
            problems.append(("empty_turn", i))
            continue
        n = len(stripped)
        if n < plan.min_chars.get(role, 0):
            problems.append(("turn_too_short", i))
        if n > plan.max_chars.get(role, 1 << 62):
            problems.append(("turn_too_long", i))
        low = stripped.lower()
        if any(m in low for m in markers) or any(p.search(stripped) for p in patterns):
            problems.append(("template_leftover", i))
        if role in cfg.refusal_roles:
            head = unicodedata.normalize("NFC", low[: cfg.refusal_window])
            if any(p in head for p in plan.refusals):
                problems.append(("refusal", i))
        ratio, total = repeat_ratio(stripped, plan.char_segmented, cfg.repeat_ngram,
                                    cfg.repeat_char_ngram)
        if total >= plan.repeat_min_ngrams and ratio > plan.max_repeat_ratio:
            problems.append(("repeated_ngrams", i))
        if cfg.duplicate_turns:
            key = collapse(stripped)
            if key in seen:
                problems.append(("duplicate_turn", i))
            else:
                seen[key] = i
    return problems
