"""Conversation logic on a scripted engine: structure, fallbacks and recorded failures."""

from __future__ import annotations

import asyncio

import pytest
from scripted_engine import ScriptedEngine, too_long

from m2l_ray.config import SamplingConfig
from m2l_ray.engines.base import Completion
from m2l_ray.plan import PlannedConversation
from m2l_ray.prompts import prompt_book
from m2l_ray.synthesis import JobInfo, Synthesizer
from m2l_ray.taxonomy import Taxonomy


def planned(taxonomy: Taxonomy, lang: str = "es", turns: int = 3, evols: int = 2) -> PlannedConversation:
    return PlannedConversation(
        key="abc123-0",
        seed_id="abc123",
        evol_slot=0,
        language_code=lang,
        task="question_answering",
        instruction="¿Cuál es la capital de Francia?",
        reference_answer="París.",
        seed_source="test",
        task_evols=tuple(e.name for e in taxonomy.evols_for("question_answering")[:evols]),
        multiturn_evols=tuple(e.name for e in taxonomy.multiturn_evols[: turns - 1]),
        turns=turns,
        work_unit=0,
        request_seed=7,
    )


def synth(engine, registry, taxonomy) -> Synthesizer:
    job = JobInfo("cfghash0000", 1, "scripted", "scripted", SamplingConfig())
    return Synthesizer(engine, registry, taxonomy, prompt_book(), job)


def spanish(request_id: str, messages) -> str:
    step = request_id.split(":")[1]
    if step.startswith("evolve"):
        return "Aquí está la instrucción reescrita: Explica por qué París es la capital de Francia y cómo llegó a serlo."
    if step == "user.2":
        return "User: ¿Y qué pasó después con la ciudad en el siglo diecinueve?"
    if step == "user.3":
        return "Compara esa historia con la de Madrid, por favor, en tres frases."
    return f"París se convirtió en capital por su posición central y su poder político. ({step})"


def test_happy_path_alternates_and_counts_turns(registry, taxonomy):
    eng = ScriptedEngine(spanish)
    row = asyncio.run(synth(eng, registry, taxonomy).run(planned(taxonomy, turns=3)))
    assert row["status"] == "ok", row["failures"]
    conv = row["conversation"]
    assert [m["role"] for m in conv] == ["user", "assistant"] * 3
    assert row["no_of_turns"] == 3 == row["planned_turns"]
    # preface stripped, label stripped
    assert row["evolved_user_prompt"].startswith("Explica por qué París")
    assert all(not m["content"].lower().startswith("user:") for m in conv)
    assert len(row["evolved_multiturn_prompt"]) == 2
    assert row["output_assistant_reply"] == conv[1]["content"]
    # the whole history is sent when answering the last turn
    last_answer = [r for r in eng.requests if r[0].endswith("answer.3")][0]
    assert [m["role"] for m in last_answer[1]] == ["system"] + ["user", "assistant"] * 2 + ["user"]
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
    assert row["language"] == "Spanish" and row["language_code"] == "es"


def test_refused_evolution_falls_back_to_next_evol(registry, taxonomy):
    def reply(request_id, messages):
        if request_id.endswith("evolve.0"):
            return "Lo siento, no puedo ayudar con eso."
        return spanish(request_id, messages)

    row = asyncio.run(synth(ScriptedEngine(reply), registry, taxonomy).run(planned(taxonomy)))
    assert row["status"] == "ok"
    assert row["failures"][0]["step"] == "evolve.0" and row["failures"][0]["reason"] == "refusal"
    p = planned(taxonomy)
    assert row["task_evol_type"] == p.task_evols[1]


@pytest.mark.parametrize(
    ("evolved", "reason"),
    [
        ("¿Cuál es la capital de Francia?", "copy_of_seed"),
        ("", "empty"),
        ("Rewrite using {seed} in {language}", "template_leakage"),
        ("Это совсем другой язык и другой алфавит для проверки.", "wrong_script"),
    ],
)
def test_failed_evolutions_are_recorded_not_emitted(registry, taxonomy, evolved, reason):
    def reply(request_id, messages):
        return evolved if "evolve" in request_id else spanish(request_id, messages)

    row = asyncio.run(synth(ScriptedEngine(reply), registry, taxonomy).run(planned(taxonomy)))
    assert row["status"] == "failed"
    assert [f["reason"] for f in row["failures"]] == [reason, reason]
    assert row["conversation"] == []


def test_prompt_too_long_is_a_row_failure(registry, taxonomy):
    def reply(request_id, messages):
        if request_id.endswith("user.2"):
            return too_long(request_id)
        return spanish(request_id, messages)

    row = asyncio.run(synth(ScriptedEngine(reply), registry, taxonomy).run(planned(taxonomy)))
    assert row["status"] == "failed"
    assert row["failures"][-1] == {
        "step": "user.2", "reason": "prompt_too_long",
        "detail": "abc123-0:user.2: 5000 prompt tokens, max_model_len 2048",
    }
    assert row["no_of_turns"] == 1


def test_truncated_instruction_keeps_a_whole_first_paragraph(registry, taxonomy):
    def reply(request_id, messages):
        if "evolve" in request_id:
            return Completion(
                "Explica con detalle por qué París es la capital de Francia.\n\nAdemás, el texto sigue y sigue sin",
                10, 160, "length",
            )
        return spanish(request_id, messages)

    row = asyncio.run(synth(ScriptedEngine(reply), registry, taxonomy).run(planned(taxonomy, turns=2)))
    assert row["status"] == "ok"
    assert row["evolved_user_prompt"] == "Explica con detalle por qué París es la capital de Francia."


def test_truncated_answer_is_kept_but_flagged(registry, taxonomy):
    def reply(request_id, messages):
        if "answer" in request_id:
            return Completion("París es la capital porque durante siglos fue", 10, 512, "length")
        return spanish(request_id, messages)

    row = asyncio.run(synth(ScriptedEngine(reply), registry, taxonomy).run(planned(taxonomy, turns=2)))
    assert row["status"] == "ok"
    assert {f["reason"] for f in row["failures"]} == {"truncated"}
    assert len([f for f in row["failures"] if f["step"].startswith("answer")]) == 2


def test_repeated_user_turn_fails_the_row(registry, taxonomy):
    def reply(request_id, messages):
        if "user" in request_id:
            return "Explica por qué París es la capital de Francia y cómo llegó a serlo."
        return spanish(request_id, messages)

    row = asyncio.run(synth(ScriptedEngine(reply), registry, taxonomy).run(planned(taxonomy)))
    assert row["status"] == "failed"
    assert row["failures"][-1]["reason"] == "repeated_turn"


def test_request_seeds_differ_per_step_and_are_stable(registry, taxonomy):
    e1, e2 = ScriptedEngine(spanish), ScriptedEngine(spanish)
    asyncio.run(synth(e1, registry, taxonomy).run(planned(taxonomy)))
    asyncio.run(synth(e2, registry, taxonomy).run(planned(taxonomy)))
    seeds1 = [r[2].seed for r in e1.requests]
    assert seeds1 == [r[2].seed for r in e2.requests]
    assert len(set(seeds1)) == len(seeds1)
