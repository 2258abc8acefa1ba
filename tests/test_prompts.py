"""Output cleaning and failure checks on real model-style outputs."""

from __future__ import annotations

import pytest

from m2l_ray.languages import LanguageRegistry
from m2l_ray.prompts import (
    clean_answer,
    clean_output,
    instruction_problem,
    prompt_book,
    render_history,
    salvage_truncated,
)

BOOK = prompt_book()
REG = LanguageRegistry.load()


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Here is the rewritten prompt: Explain photosynthesis.", "Explain photosynthesis."),
        ("Sure! Here's a harder version of the instruction:\nExplain photosynthesis.", "Explain photosynthesis."),
        ("#Rewritten Prompt#: Explain photosynthesis.", "Explain photosynthesis."),
        ("**New prompt:** Explain photosynthesis.", "Explain photosynthesis."),
        ('"Explain photosynthesis."', "Explain photosynthesis."),
        ("«Объясни фотосинтез.»", "Объясни фотосинтез."),
        ("```\nExplain photosynthesis.\n```", "Explain photosynthesis."),
        ("User: Explain photosynthesis.\nAssistant: Photosynthesis is...", "Explain photosynthesis."),
        ("Voici la consigne réécrite : Explique la photosynthèse.", "Explique la photosynthèse."),
        ("以下是改写后的指令：解释光合作用。", "解释光合作用。"),
        ("Explain photosynthesis.\nExplanation: I made it harder by...", "Explain photosynthesis."),
    ],
)
def test_clean_output_strips_wrappers(raw, clean):
    assert clean_output(BOOK, raw) == clean


def test_clean_output_keeps_content_colons():
    text = "Compare two cities: Paris and Rome, in 100 words."
    assert clean_output(BOOK, text) == text


def test_clean_answer_keeps_wording_but_cuts_the_user_side():
    assert clean_answer("Sure, here it is: 42.\nUser: thanks") == "Sure, here it is: 42."


def test_salvage_keeps_only_whole_sentences():
    assert salvage_truncated("Write a poem about rain.\n\nHere are some tips for") == "Write a poem about rain."
    assert salvage_truncated("Write a poem about rain. Use four lines. Then the model goes on and") == (
        "Write a poem about rain. Use four lines.")
    assert salvage_truncated("写一首关于雨的诗。要有四行。然后模型继续") == "写一首关于雨的诗。要有四行。"
    assert salvage_truncated("Write a poem about rain and the way it") is None
    assert salvage_truncated("Short. And then") is None  # too short to be an instruction


@pytest.mark.parametrize(
    ("lang", "text", "reason"),
    [
        ("en", "I'm sorry, but I can't help with that.", "refusal"),
        ("es", "Lo siento, no puedo ayudar con eso.", "refusal"),
        ("hi", "Explain the water cycle to a child in five simple steps.", "wrong_script"),
        ("zh", "Explain the water cycle to a child in five simple steps.", "wrong_script"),
        ("en", "Rewrite {seed} so that it is harder.", "template_leakage"),
        ("en", "What is the capital of France?", "copy_of_seed"),
        ("en", "", "empty"),
    ],
)
def test_instruction_problems(lang, text, reason):
    problem = instruction_problem(BOOK, text, REG.get(lang), previous=["What is the capital of France?"])
    assert problem is not None and problem[0] == reason


@pytest.mark.parametrize(
    ("lang", "text"),
    [
        ("hi", "पानी के चक्र को पाँच आसान चरणों में एक बच्चे को समझाइए।"),
        ("am", "የውሃ ዑደትን ለልጅ በአምስት ቀላል ደረጃዎች አብራራ።"),
        ("zh", "用五个简单的步骤向孩子解释水循环，并举一个生活中的例子。"),
        ("en", "Explain the water cycle to a child in five simple steps, with one example."),
    ],
)
def test_good_instructions_pass(lang, text):
    assert instruction_problem(BOOK, text, REG.get(lang), previous=["What is rain?"]) is None


def test_render_history():
    h = render_history([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    assert h == "User: Hi\nAssistant: Hello"


def test_echo_of_the_template_is_leakage():
    template = "Add one or two explicit, checkable constraints to the instruction below. Write in {language}.\n{seed}"
    echoed = "Add one or two explicit, checkable constraints or requirements for the task."
    problem = instruction_problem(BOOK, echoed, REG.get("en"), template=template)
    assert problem == ("template_leakage", "add one or two explicit checkable")
    fresh = "List three checkable facts about the Nile, each under ten words."
    assert instruction_problem(BOOK, fresh, REG.get("en"), template=template) is None
