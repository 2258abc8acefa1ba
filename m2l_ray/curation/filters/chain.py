"""The filters of one job, built on the driver and run on a row in the workers."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from m2l_ray.curation.config import CurationConfig
from m2l_ray.curation.filters.base import Conversation, ConversationFilter, Problem, TurnFilter
from m2l_ray.curation.filters.order import FILTERS, REASON_ORDER

if TYPE_CHECKING:
    from m2l_ray.languages import LanguageRegistry

_RANK = {r: i for i, r in enumerate(REASON_ORDER)}


class FilterChain:
    """The enabled filters of a job in priority order (picklable, no registry or config).

    Every filter runs on every row, so each has its own pass rate; the order of a row's
    problems (its ``curation_flags``) is: whole-conversation checks, then the turn checks
    turn by turn, then the late filters (language ID).
    """

    def __init__(self, filters: Sequence[ConversationFilter]) -> None:
        self.filters = tuple(filters)
        self._whole = [f for f in self.filters if not f.late and not isinstance(f, TurnFilter)]
        self._turns = [f for f in self.filters if not f.late and isinstance(f, TurnFilter)]
        self._late = [f for f in self.filters if f.late]

    def check(self, conv: Conversation) -> list[Problem]:
        """Every (reason, turn) problem of the row, in the order described above."""
        problems = [p for f in self._whole for p in f.check(conv)]
        for turn in conv.text_turns:
            problems += [(r, turn.index) for f in self._turns if (r := f.judge(turn, conv))]
        problems += [p for f in self._late for p in f.check(conv)]
        return problems


def first_problem(problems: Sequence[Problem]) -> Problem | tuple[None, None]:
    """The problem that names the row's drop reason: the first in ``REASON_ORDER``, then the earliest turn."""
    return min(problems, key=lambda p: (_RANK[p[0]], -1 if p[1] is None else p[1]), default=(None, None))


def build_chain(cfg: CurationConfig, registry: LanguageRegistry, codes: Sequence[str],
                groups: Collection[str] | None = None) -> FilterChain:
    """The job's filters for the language ``codes`` of its data.

    ``curation.heuristics.enabled: false`` leaves out every filter of the "heuristics"
    group; ``groups`` keeps only the filters of those groups (heuristics alone, say).
    """
    built = []
    for cls in FILTERS:
        if (groups is not None and cls.group not in groups) or (
                cls.group == "heuristics" and not cfg.heuristics.enabled):
            continue
        f = cls.build(cfg, registry, codes)
        if f is not None:
            built.append(f)
    return FilterChain(built)
