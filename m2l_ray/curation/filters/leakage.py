"""Our own prompt scaffolding or a chat template's tokens left in a turn."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from m2l_ray.curation.config import CurationConfig
from m2l_ray.curation.filters.base import Conversation, Turn, TurnFilter
from m2l_ray.textchecks import CHAT_TEMPLATE_PATTERNS, leaked_marker

if TYPE_CHECKING:
    from m2l_ray.languages import LanguageRegistry


class TemplateLeftover(TurnFilter):
    """A marker of our prompts ("#Rewritten Prompt#", "{seed}") or a chat-template token.

    Markers: ``curation.heuristics.template_markers``, by default the ones synthesis
    rejects (prompts.yaml ``leak_markers``); patterns: ``template_patterns``, by
    default chat-template tokens and bare role labels.
    """

    name = "template_leftover"
    reasons = (name,)

    def __init__(self, markers: tuple[str, ...], patterns: tuple[re.Pattern[str], ...]) -> None:
        self.markers = markers
        self.patterns = patterns

    @classmethod
    def build(cls, cfg: CurationConfig, registry: LanguageRegistry,
              codes: Sequence[str]) -> TemplateLeftover:
        h = cfg.heuristics
        if h.template_markers is not None:
            markers = h.template_markers
        else:
            from m2l_ray.prompts import prompt_book  # the markers synthesis rejects

            markers = prompt_book().leak_markers
        patterns = h.template_patterns if h.template_patterns is not None else CHAT_TEMPLATE_PATTERNS
        return cls(tuple(m.lower() for m in markers), tuple(re.compile(p) for p in patterns))

    def check_turn(self, turn: Turn, conv: Conversation) -> str | None:
        if leaked_marker(turn.low, self.markers) or any(p.search(turn.text) for p in self.patterns):
            return self.name
        return None
