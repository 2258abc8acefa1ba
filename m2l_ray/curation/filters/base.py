"""What a curation filter is: a name, the reasons it can return, and a check.

A filter judges one conversation. Most judge one turn at a time (``TurnFilter``:
``check_turn`` returns a reason or None); a few need the whole conversation
(``ConversationFilter.check``: the structure of the roles, fastText over every turn).
Filters are built once per job on the driver from the curation config and the
languages in the data (``build``; None switches the filter off), then pickled to the
workers with their per-language settings already resolved, so a worker never reads a
registry or a config.

Where a filter sits in ``order.FILTERS`` sets the priority of its reasons: a row that
fails several checks is dropped for the first reason in that list.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from m2l_ray.curation.config import CurationConfig, HeuristicsConfig
from m2l_ray.curation.textnorm import collapse

#: (reason, index of the turn it was found in; None when it is about the whole conversation)
Problem = tuple[str, int | None]
T = TypeVar("T")

if TYPE_CHECKING:
    from m2l_ray.languages import Language, LanguageRegistry


class Turn:
    """One non-system turn, with the derived forms several filters read (computed once)."""

    def __init__(self, index: int, role: str, content: str) -> None:
        self.index = index
        self.role = role
        self.text = content.strip()

    @functools.cached_property
    def low(self) -> str:
        return self.text.lower()

    @functools.cached_property
    def collapsed(self) -> str:
        """Whitespace-collapsed, case-folded: two turns equal under this are duplicates."""
        return collapse(self.text)


@dataclass
class Conversation:
    """One row as the filters see it; ``notes`` is where a filter leaves per-turn annotations."""

    turns: Sequence[tuple[str, str]]  # (role, content) of every message, system included
    code: str | None = None  # the row's language code
    task: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def text_turns(self) -> list[Turn]:
        """The user and assistant turns (system messages are instructions, not data)."""
        return [Turn(i, role, content) for i, (role, content) in enumerate(self.turns) if role != "system"]


class ConversationFilter:
    """A check of one conversation; subclasses set ``name``, ``reasons`` and ``check``.

    ``group`` names the curation step the report's funnel counts the reasons under
    ("heuristics" or "lid"). ``late`` filters run after the others (their problems come
    last in a row's ``curation_flags``); priority is still their place in the list.
    """

    name: ClassVar[str]
    reasons: ClassVar[tuple[str, ...]]
    group: ClassVar[str] = "heuristics"
    late: ClassVar[bool] = False

    @classmethod
    def build(cls, cfg: CurationConfig, registry: LanguageRegistry,
              codes: Sequence[str]) -> ConversationFilter | None:
        """The filter for one job (``codes``: the language codes of its data), or None when
        its knob switches it off."""
        return cls()

    def check(self, conv: Conversation) -> list[Problem]:
        raise NotImplementedError


class TurnFilter(ConversationFilter):
    """A check of one turn at a time. Turns with no text reach only filters with ``empty_turns``."""

    empty_turns: ClassVar[bool] = False

    def check_turn(self, turn: Turn, conv: Conversation) -> str | None:
        """The reason this turn fails, or None."""
        raise NotImplementedError

    def judge(self, turn: Turn, conv: Conversation) -> str | None:
        """``check_turn`` of a turn this filter reads (turns with text, unless ``empty_turns``)."""
        return self.check_turn(turn, conv) if turn.text or self.empty_turns else None

    def check(self, conv: Conversation) -> list[Problem]:
        return [(r, t.index) for t in conv.text_turns if (r := self.judge(t, conv))]


class LanguageTable(Generic[T]):
    """A filter's setting per language code of the data, resolved on the driver.

    ``make`` gets the registry's ``Language`` (None for a code it does not know); rows
    without a code of the data get the setting of English.
    """

    def __init__(self, registry: LanguageRegistry, codes: Sequence[str],
                 make: Callable[[Language | None], T]) -> None:
        self._by_code: dict[str, T] = {code: make(registry.resolve(code)) for code in codes}
        self.default: T = make(registry.resolve("en"))

    def __getitem__(self, code: str | None) -> T:
        return self._by_code.get(code or "", self.default)


def overrides(heuristics: HeuristicsConfig, lang: Language | None) -> Mapping[str, Any]:
    """The per-language overrides (``curation.heuristics.overrides.<code>``) of a language."""
    return heuristics.overrides.get(lang.code, {}) if lang is not None else {}
