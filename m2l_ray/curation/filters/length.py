"""Turn length bounds per role (``curation.heuristics.min_chars`` / ``max_chars``, per-language overrides)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from m2l_ray.curation.config import CurationConfig
from m2l_ray.curation.filters.base import Conversation, LanguageTable, Turn, TurnFilter, overrides

if TYPE_CHECKING:
    from m2l_ray.languages import LanguageRegistry


class _LengthBound(TurnFilter):
    """A bound on a turn's stripped length in characters, per role and language."""

    knob: str  # the HeuristicsConfig field (and override key) with the bound per role

    def __init__(self, bounds: LanguageTable[dict[str, int]]) -> None:
        self.bounds = bounds

    @classmethod
    def build(cls, cfg: CurationConfig, registry: LanguageRegistry,
              codes: Sequence[str]) -> _LengthBound:
        h = cfg.heuristics
        return cls(LanguageTable(registry, codes, lambda lang: {
            **getattr(h, cls.knob), **overrides(h, lang).get(cls.knob, {})}))


class TurnTooShort(_LengthBound):
    """Shorter than its role's minimum: a cut or empty-ish generation."""

    name = "turn_too_short"
    reasons = (name,)
    knob = "min_chars"

    def check_turn(self, turn: Turn, conv: Conversation) -> str | None:
        return self.name if len(turn.text) < self.bounds[conv.code].get(turn.role, 0) else None


class TurnTooLong(_LengthBound):
    """Longer than its role's maximum: usually a model that did not stop."""

    name = "turn_too_long"
    reasons = (name,)
    knob = "max_chars"

    def check_turn(self, turn: Turn, conv: Conversation) -> str | None:
        return self.name if len(turn.text) > self.bounds[conv.code].get(turn.role, 1 << 62) else None
