"""fastText language ID of every turn (and the script check), as a filter of the chain.

The model, the per-language plans and the script check live in curation/langid.py;
this filter runs them over a row's turns, returns the turns in the wrong language and
leaves the per-turn labels and scores in ``conv.notes["lid"]`` for the stage's
annotation columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from m2l_ray.curation import langid
from m2l_ray.curation.config import CurationConfig, LidConfig
from m2l_ray.curation.filters.base import Conversation, ConversationFilter, Problem

if TYPE_CHECKING:
    from m2l_ray.languages import LanguageRegistry


class LanguageId(ConversationFilter):
    """``lid_mismatch``: fastText gives the row's language too little probability;
    ``script_mismatch``: too few letters in the language's script.

    Late: fastText costs more than the string checks, and its problems come after
    theirs in ``curation_flags``. Rows of ``curation.lid.exempt_tasks`` get the script
    check only.
    """

    name = "language_id"
    reasons = ("lid_mismatch", "script_mismatch")
    group = "lid"
    late = True

    def __init__(self, cfg: LidConfig, plans: dict[str, langid.LangPlan], label_codes: dict[str, str],
                 model_path: str | None) -> None:
        self.cfg = cfg
        self.plans = plans
        self.label_codes = label_codes
        self.model_path = model_path
        self.exempt = frozenset(cfg.exempt_tasks)

    @classmethod
    def build(cls, cfg: CurationConfig, registry: LanguageRegistry,
              codes: Sequence[str]) -> LanguageId:
        return cls(cfg.lid, langid.build_plans(cfg, registry, list(codes)),
                   langid.label_codes(registry, cfg.lid.resolved_family()),
                   cfg.lid.model_path() if cfg.enabled and cfg.lid.enabled else None)

    def check(self, conv: Conversation) -> list[Problem]:
        """Problems of the row; its labels (as registry codes), scores and expected-language
        probabilities, one per message (None where not checked), go to ``conv.notes["lid"]``."""
        model = (langid.load_model(self.model_path)
                 if self.model_path and conv.task not in self.exempt else None)
        plan = self.plans.get(conv.code or "")
        labels: list[str | None] = []
        scores: list[float | None] = []
        expected: list[float | None] = []
        problems: list[Problem] = []
        for i, (role, content) in enumerate(conv.turns):
            if role not in self.cfg.roles:
                labels.append(None)
                scores.append(None)
                expected.append(None)
                continue
            verdict = langid.judge_turn(content, plan, model, self.cfg)
            labels.append(self.label_codes.get(verdict.label, verdict.label.removeprefix(langid.LABEL_PREFIX))
                          if verdict.label else None)
            scores.append(verdict.score)
            expected.append(verdict.expected)
            if verdict.reason:
                problems.append((verdict.reason, i))
        conv.notes["lid"] = (labels, scores, expected)
        return problems
