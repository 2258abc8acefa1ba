"""THE ordered list of curation filters; every drop-reason order is derived from it.

A row that fails several checks is dropped for the reason that comes first here (and
the earliest turn among equals); stats.json, the report and the card list reasons in
this order. To add a filter: a module with one ``ConversationFilter`` / ``TurnFilter``
class (see base.py and replacement_char.py), its place in this list, a knob under
``curation.heuristics`` if users should be able to switch it off, and a test.
"""

from __future__ import annotations

from m2l_ray.curation.filters.base import ConversationFilter
from m2l_ray.curation.filters.language_id import LanguageId
from m2l_ray.curation.filters.leakage import TemplateLeftover
from m2l_ray.curation.filters.length import TurnTooLong, TurnTooShort
from m2l_ray.curation.filters.refusal import Refusal
from m2l_ray.curation.filters.repetition import RepeatedNgrams
from m2l_ray.curation.filters.replacement_char import ReplacementChar
from m2l_ray.curation.filters.structure import DuplicateTurn, EmptyTurn, MalformedConversation

FILTERS: tuple[type[ConversationFilter], ...] = (
    MalformedConversation,  # structure first: nothing else about a broken row matters as much
    EmptyTurn,
    TurnTooShort,
    TurnTooLong,
    TemplateLeftover,
    Refusal,
    ReplacementChar,  # before LID: broken text also fails LID, and this names the cause
    LanguageId,  # before the repetition checks: a wrong-language row is wrong whatever else it is
    RepeatedNgrams,
    DuplicateTurn,
)

#: Rows whose generation failed; they never reach the filters.
GENERATION_FAILED = "generation_failed"
#: Rows removed by dedup, which runs on what the filters kept.
NEAR_DUPLICATE = "near_duplicate"

FILTER_REASONS = tuple(r for f in FILTERS for r in f.reasons)
#: Which problem names a row's drop reason when it has several.
REASON_ORDER = (GENERATION_FAILED, *FILTER_REASONS, NEAR_DUPLICATE)
#: The reasons of each curation step, as the report's funnel takes them off.
HEURISTIC_REASONS = tuple(r for f in FILTERS if f.group == "heuristics" for r in f.reasons)
LID_REASONS = tuple(r for f in FILTERS if f.group == "lid" for r in f.reasons)
