"""A turn with U+FFFD, the Unicode replacement character: text broken by a bad decoding.

A decoder puts U+FFFD where bytes were not valid UTF-8: a seed file read in the wrong
encoding, or a model whose tokenizer emitted half a multi-byte character. Such a turn
shows a "�" where letters should be, so it is dropped as ``replacement_char``
(``curation.heuristics.replacement_char: false`` keeps it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from m2l_ray.curation.config import CurationConfig
from m2l_ray.curation.filters.base import Conversation, Turn, TurnFilter

if TYPE_CHECKING:
    from m2l_ray.languages import LanguageRegistry

REPLACEMENT_CHAR = "\ufffd"


class ReplacementChar(TurnFilter):
    """U+FFFD anywhere in a turn (see the module docstring)."""

    name = "replacement_char"
    reasons = (name,)

    @classmethod
    def build(cls, cfg: CurationConfig, registry: LanguageRegistry,
              codes: Sequence[str]) -> ReplacementChar | None:
        return cls() if cfg.heuristics.replacement_char else None

    def check_turn(self, turn: Turn, conv: Conversation) -> str | None:
        return self.name if REPLACEMENT_CHAR in turn.text else None
