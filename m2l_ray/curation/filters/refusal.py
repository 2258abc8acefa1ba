"""A turn that opens with a refusal: the model declined instead of answering or asking."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from m2l_ray.curation.config import CurationConfig
from m2l_ray.curation.filters.base import Conversation, LanguageTable, Turn, TurnFilter
from m2l_ray.textchecks import RefusalCheck, normalise_phrases

if TYPE_CHECKING:
    from m2l_ray.languages import LanguageRegistry


class Refusal(TurnFilter):
    """A refusal phrase of the row's language (refusals.yaml, English ones included) or of
    ``curation.heuristics.extra_refusals`` in the first ``refusal_window`` characters of a
    turn of ``refusal_roles``; the same match synthesis runs on each generated instruction.
    """

    name = "refusal"
    reasons = (name,)

    def __init__(self, check: RefusalCheck, roles: tuple[str, ...],
                 phrases: LanguageTable[tuple[str, ...]]) -> None:
        self.refusal = check
        self.roles = roles
        self.phrases = phrases

    @classmethod
    def build(cls, cfg: CurationConfig, registry: LanguageRegistry,
              codes: Sequence[str]) -> Refusal:
        h = cfg.heuristics
        check = RefusalCheck(h.refusal_window, normalise_phrases(h.extra_refusals))
        phrases = LanguageTable(registry, codes, lambda lang: tuple(lang.refusals) if lang is not None else ())
        return cls(check, tuple(h.refusal_roles), phrases)

    def check_turn(self, turn: Turn, conv: Conversation) -> str | None:
        if turn.role in self.roles and self.refusal.phrase(turn.text, self.phrases[conv.code]):
            return self.name
        return None
