"""The shape of a conversation: roles that alternate, turns with text, no turn said twice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from m2l_ray.curation.config import ROLES, CurationConfig
from m2l_ray.curation.filters.base import Conversation, ConversationFilter, Problem, Turn, TurnFilter

if TYPE_CHECKING:
    from m2l_ray.languages import LanguageRegistry


class MalformedConversation(ConversationFilter):
    """User first, assistant last, alternating, no unknown role (system messages aside).

    A half-failed generation can leave a conversation that ends on a user turn or has
    two answers in a row; it reads as a conversation but trains the wrong turn-taking.
    The turn is the first one with an unknown role, else None (the whole conversation).
    """

    name = "malformed_conversation"
    reasons = (name,)

    def check(self, conv: Conversation) -> list[Problem]:
        roles = [t.role for t in conv.text_turns]
        if (roles and roles[0] == "user" and roles[-1] == "assistant" and all(r in ROLES for r in roles)
                and not any(a == b for a, b in zip(roles, roles[1:], strict=False))):
            return []
        bad = next((i for i, (r, _) in enumerate(conv.turns) if r not in (*ROLES, "system")), None)
        return [(self.name, bad)]


class EmptyTurn(TurnFilter):
    """A turn with nothing but whitespace (the only check such a turn gets)."""

    name = "empty_turn"
    reasons = (name,)
    empty_turns = True

    def check_turn(self, turn: Turn, conv: Conversation) -> str | None:
        return None if turn.text else self.name


class DuplicateTurn(TurnFilter):
    """A turn that repeats an earlier turn of the same conversation (whitespace and case aside).

    A model stuck in a loop answers the follow-up with its first answer, or asks the
    same question again. Switched off by ``curation.heuristics.duplicate_turns: false``.
    """

    name = "duplicate_turn"
    reasons = (name,)

    @classmethod
    def build(cls, cfg: CurationConfig, registry: LanguageRegistry,
              codes: Sequence[str]) -> DuplicateTurn | None:
        return cls() if cfg.heuristics.duplicate_turns else None

    def check_turn(self, turn: Turn, conv: Conversation) -> str | None:
        for earlier in conv.text_turns:
            if earlier is turn:
                return None
            if earlier.text and earlier.collapsed == turn.collapsed:
                return self.name
        return None
