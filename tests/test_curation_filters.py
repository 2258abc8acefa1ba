"""The filter extension point: one ordered list sets priority, and a filter is one class.

``replacement_char`` is the example of a filter added through it: one module, one place in
``order.FILTERS``, one knob; the stats, the report and the card list it without edits.
"""

from __future__ import annotations

import pytest

from m2l_ray import report
from m2l_ray.curation import filters
from m2l_ray.curation.config import CurationConfig
from m2l_ray.curation.filters.order import FILTERS
from m2l_ray.errors import ConfigError

ANSWER = ("Photosynthesis is the process by which green plants use sunlight, water and carbon "
          "dioxide to make glucose and oxygen, mostly in the chloroplasts of their leaves.")
BROKEN = "Photosynthesis is the process by which green plants use sunlight, w\ufffd\ufffdter and air."


def _problems(turns, registry, cfg=None, code="en"):
    chain = filters.build_chain(cfg or CurationConfig(), registry, [code], groups=("heuristics",))
    return chain.check(filters.Conversation(turns, code))


def test_reason_order_is_the_filter_list():
    reasons = [r for f in FILTERS for r in f.reasons]
    assert filters.REASON_ORDER == ("generation_failed", *reasons, "near_duplicate")
    assert len(set(filters.REASON_ORDER)) == len(filters.REASON_ORDER), "two filters share a reason"
    assert set(filters.HEURISTIC_REASONS) | set(filters.LID_REASONS) == set(reasons)
    assert filters.LID_REASONS == ("lid_mismatch", "script_mismatch")


def test_replacement_char_drops_the_turn(registry):
    problems = _problems([("user", "How does photosynthesis work?"), ("assistant", BROKEN)], registry)
    assert problems == [("replacement_char", 1)]
    assert _problems([("user", "How does photosynthesis work?"), ("assistant", ANSWER)], registry) == []


def test_replacement_char_knob_switches_it_off(registry):
    off = CurationConfig.from_dict({"heuristics": {"replacement_char": False}})
    assert _problems([("user", "How does photosynthesis work?"), ("assistant", BROKEN)], registry, off) == []
    with pytest.raises(ConfigError, match="curation.heuristics.replacement_char"):
        CurationConfig.from_dict({"heuristics": {"replacement_char": "no"}})


def test_priority_follows_the_list():
    # refusal comes before replacement_char, which comes before language ID
    assert filters.first_problem([("replacement_char", 0), ("refusal", 1)]) == ("refusal", 1)
    assert filters.first_problem([("lid_mismatch", 0), ("replacement_char", 1)]) == ("replacement_char", 1)
    assert filters.first_problem([("replacement_char", 3), ("replacement_char", 1)]) == (
        "replacement_char", 1)
    assert filters.first_problem([]) == (None, None)


def test_report_lists_a_new_reason_without_edits():
    stats = {"per_language": {"xx": {"raw": 10, "ok": 9, "kept": 4}},
             "curation": {"per_language": {"xx": {"dropped": {
                 "lid_mismatch": 1, "replacement_char": 2, "refusal": 1, "near_duplicate": 1}}}},
             "drop_reasons": {"lid_mismatch": 1, "replacement_char": 2, "refusal": 1, "near_duplicate": 1}}
    assert report.reason_order(stats) == ["refusal", "replacement_char", "lid_mismatch", "near_duplicate"]
    f = report.funnel(stats)["xx"]
    assert f["after_heuristics"] == 6 and f["after_lid"] == 5 and f["kept"] == 4


def test_flags_order_whole_conversation_then_turns_then_late_filters(registry):
    cfg = CurationConfig.from_dict({"lid": {"enabled": False}})
    chain = filters.build_chain(cfg, registry, ["en"])
    turns = [("assistant", "I'm sorry, but I can't help with that."), ("user", "?")]
    assert chain.check(filters.Conversation(turns, "en")) == [
        ("malformed_conversation", None), ("refusal", 0), ("turn_too_short", 1)]


def test_a_new_filter_is_one_class(registry):
    class Shouting(filters.TurnFilter):
        name = "shouting"
        reasons = (name,)

        def check_turn(self, turn, conv):
            return self.name if turn.text.isupper() else None

    chain = filters.FilterChain([Shouting()])
    conv = filters.Conversation([("user", "WHY IS THE SKY BLUE"), ("assistant", "Rayleigh scattering.")],
                                "en")
    assert chain.check(conv) == [("shouting", 0)]
