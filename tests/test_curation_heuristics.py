"""Quality heuristics on crafted bad turns: each problem gets its own reason code."""

from __future__ import annotations

import pytest

from m2l_ray.curation import filters
from m2l_ray.curation.config import CurationConfig
from m2l_ray.curation.filters.repetition import repeat_ratio
from m2l_ray.languages import LanguageRegistry

GOOD_ANSWER = (
    "Photosynthesis is the process by which green plants use sunlight, water and carbon "
    "dioxide to make glucose and oxygen. It happens mostly in the leaves, inside the "
    "chloroplasts, and it is the basis of almost every food chain on Earth."
)


def _check(turns, code="en", cfg=None, registry=None):
    cfg = cfg or CurationConfig()
    reg = registry or LanguageRegistry.load()
    chain = filters.build_chain(cfg, reg, [code], groups=("heuristics",))
    return chain.check(filters.Conversation(turns, code))


def _reasons(problems):
    return [r for r, _ in problems]


def test_good_conversation_has_no_problems(registry):
    turns = [("user", "How does photosynthesis work?"), ("assistant", GOOD_ANSWER),
             ("user", "And why does it matter for animals?"),
             ("assistant", "Animals eat plants, or eat animals that ate plants, so the energy "
                           "that photosynthesis stores ends up feeding them too.")]
    assert _check(turns, registry=registry) == []


@pytest.mark.parametrize("turns, reason, turn", [
    ([("user", "Hi"), ("assistant", "   \n ")], "empty_turn", 1),
    ([("user", "?"), ("assistant", GOOD_ANSWER)], "turn_too_short", 0),
    ([("user", "Explain it."), ("assistant", "x" * 40000)], "turn_too_long", 1),
    ([("user", "#Rewritten Prompt#: explain photosynthesis"), ("assistant", GOOD_ANSWER)],
     "template_leftover", 0),
    ([("user", "Tell me about {seed} in detail"), ("assistant", GOOD_ANSWER)],
     "template_leftover", 0),
    ([("user", "Explain photosynthesis."), ("assistant", GOOD_ANSWER + "<|im_end|>")],
     "template_leftover", 1),
    ([("user", "Explain photosynthesis."),
      ("assistant", "I'm sorry, but I can't help with that request.")], "refusal", 1),
    ([("user", "As an AI language model, I cannot rewrite this prompt."),
      ("assistant", GOOD_ANSWER)], "refusal", 0),
    ([("user", "Explain photosynthesis."),
      ("assistant", "The plant makes food. " * 40)], "repeated_ngrams", 1),
    ([("user", "Explain photosynthesis."), ("assistant", GOOD_ANSWER),
      ("user", "Explain  photosynthesis. "), ("assistant", GOOD_ANSWER + " Indeed.")],
     "duplicate_turn", 2),
    ([("assistant", GOOD_ANSWER), ("user", "Thanks")], "malformed_conversation", None),
    ([("user", "One"), ("user", "Two"), ("assistant", GOOD_ANSWER)],
     "malformed_conversation", None),
])
def test_crafted_bad_turns(turns, reason, turn, registry):
    problems = _check(turns, registry=registry)
    assert (reason, turn) in problems, problems


def test_refusal_in_the_conversation_language(registry):
    answer = "很抱歉，我无法回答这个问题。"
    turns = [("user", "请解释一下光合作用的过程和意义。"), ("assistant", answer)]
    assert ("refusal", 1) in _check(turns, "zh", registry=registry)


def test_refusal_late_in_a_long_turn_is_not_a_refusal(registry):
    story = GOOD_ANSWER + " " + GOOD_ANSWER + ' Then the fox said: "I am sorry" and left.'
    assert _check([("user", "Tell me a story."), ("assistant", story)], registry=registry) == []


def test_repetition_uses_characters_for_chinese(registry):
    looped = "光合作用是植物利用阳光的过程。" * 12
    problems = _check([("user", "请解释一下光合作用。"), ("assistant", looped)], "zh",
                      registry=registry)
    assert ("repeated_ngrams", 1) in problems
    normal = ("光合作用是绿色植物利用阳光、水和二氧化碳制造葡萄糖和氧气的过程。它主要发生在叶子的"
              "叶绿体中，是地球上几乎所有食物链的基础，也为动物提供了呼吸所需的氧气。")
    assert _check([("user", "请解释一下光合作用。"), ("assistant", normal)], "zh",
                  registry=registry) == []


def test_per_language_overrides_and_disable(registry):
    cfg = CurationConfig.from_dict(
        {"heuristics": {"overrides": {"en": {"min_chars": {"user": 50}}}}})
    turns = [("user", "How does photosynthesis work?"), ("assistant", GOOD_ANSWER)]
    assert ("turn_too_short", 0) in _check(turns, "en", cfg, registry)
    assert _check(turns, "de", cfg, registry) == []
    off = CurationConfig.from_dict({"heuristics": {"enabled": False}})
    assert _check([("user", ""), ("assistant", "")], "en", off, registry) == []


def test_repeat_ratio_values():
    ratio, total = repeat_ratio("a b c a b c a b c", False, 3, 6)
    assert total == 7 and ratio == pytest.approx(1 - 3 / 7)
    assert repeat_ratio("one two", False, 3, 6) == (0.0, 0)
