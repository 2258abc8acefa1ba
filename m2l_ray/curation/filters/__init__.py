"""Curation filters: one class per check, one ordered list (order.FILTERS) that sets priority.

``build_chain`` turns the list into a job's ``FilterChain`` on the driver; the curation
stage runs ``FilterChain.check`` on every row. Importing this package imports no Ray,
so the report and the card read the reason order from here.
"""

from m2l_ray.curation.filters.base import Conversation, ConversationFilter, Problem, Turn, TurnFilter
from m2l_ray.curation.filters.chain import FilterChain, build_chain, first_problem
from m2l_ray.curation.filters.order import (
    FILTER_REASONS,
    FILTERS,
    GENERATION_FAILED,
    HEURISTIC_REASONS,
    LID_REASONS,
    NEAR_DUPLICATE,
    REASON_ORDER,
)

__all__ = [
    "FILTERS", "FILTER_REASONS", "GENERATION_FAILED", "HEURISTIC_REASONS", "LID_REASONS", "NEAR_DUPLICATE",
    "REASON_ORDER", "Conversation", "ConversationFilter", "FilterChain", "Problem", "Turn", "TurnFilter",
    "build_chain", "first_problem",
]
