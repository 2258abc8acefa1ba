"""The conversation logic of the M2Lingual method, independent of any engine.

For one planned evolution of a seed: (a) evolve the seed instruction into a harder
one in the same language (falling back to the next planned evol type when an
evolution fails), (b) answer it: the evolved pair; (c) when the plan grows it into a
multi-turn conversation, for every further turn write the user's next message from
that turn's multi-turn evol prompt and the conversation so far, and answer it with
the whole history. A failed later turn fails the conversation, not the pair
(``pair_status``), so the pair still reaches ``seed_evol_data``. Every failure is recorded with its step and reason; a row
that failed says so (status "failed") instead of posing as a conversation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from m2l_ray import __version__
from m2l_ray.config import SamplingConfig
from m2l_ray.engines.base import Completion, Engine, RequestFailed, StepParams
from m2l_ray.languages import Language, LanguageRegistry
from m2l_ray.plan import PlannedConversation, planned_requests, stable_int
from m2l_ray.prompts import (
    PromptBook,
    answer_messages,
    clean_answer,
    clean_output,
    evolve_messages,
    instruction_problem,
    next_user_messages,
    salvage_truncated,
    script_check,
)
from m2l_ray.schema import EVOLVED, MULTITURN
from m2l_ray.taxonomy import Taxonomy


@dataclass
class JobInfo:
    """Provenance stamped on every row."""

    config_hash: str
    job_seed: int
    model: str
    engine: str
    sampling: SamplingConfig


@dataclass
class _Acc:
    failures: list[dict[str, str]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    by_stage: dict[str, list[int]] = field(default_factory=dict)

    def add(self, step: str, c: Completion) -> None:
        self.prompt_tokens += c.prompt_tokens
        self.completion_tokens += c.completion_tokens
        stage = self.by_stage.setdefault(step.split(".")[0], [0, 0, 0])
        stage[0] += c.prompt_tokens
        stage[1] += c.completion_tokens
        stage[2] += 1

    def fail(self, step: str, reason: str, detail: str = "") -> None:
        self.failures.append({"step": step, "reason": reason, "detail": detail[:300]})


def requests_after(p: PlannedConversation, step: str) -> int:
    """Requests the conversation still needs after ``step`` when nothing fails.

    ``evolve.N`` (any attempt) and ``answer.1`` make the evolved pair; every further turn
    T is ``user.T`` then ``answer.T``. Engines that schedule by priority run the request
    with the most work behind it first (critical path first): a job's last minutes are
    then not spent on a few long conversations running their turns one by one on a
    nearly empty batch.
    """
    stage, _, n = step.partition(".")
    turn = int(n) if stage != "evolve" else 0
    done = {"evolve": 1, "answer": 2 * turn, "user": 2 * turn - 1}[stage]
    return max(0, planned_requests(p) - done)


class Synthesizer:
    """Drives one conversation at a time; many run concurrently on one engine."""

    def __init__(
        self,
        engine: Engine,
        registry: LanguageRegistry,
        taxonomy: Taxonomy,
        book: PromptBook,
        job: JobInfo,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.taxonomy = taxonomy
        self.book = book
        self.job = job
        s = job.sampling
        self._sampling_json = json.dumps(asdict(s), sort_keys=True)

    def _params(self, p: PlannedConversation, step: str, max_tokens: int) -> StepParams:
        s = self.job.sampling
        seed = stable_int(p.request_seed, step) if s.seed else None
        return StepParams(max_tokens, s.temperature, s.top_p, s.repetition_penalty, seed,
                          priority=-requests_after(p, step))

    async def _ask(
        self, p: PlannedConversation, acc: _Acc, step: str, messages: list[dict[str, str]], max_tokens: int
    ) -> Completion | None:
        try:
            c = await self.engine.chat(messages, self._params(p, step, max_tokens), f"{p.key}:{step}")
        except RequestFailed as e:
            acc.fail(step, e.reason, e.detail)
            return None
        acc.add(step, c)
        return c

    async def run(self, p: PlannedConversation) -> dict[str, Any]:
        lang = self.registry.get(p.language_code)
        task = self.taxonomy.task(p.task)
        acc = _Acc()
        s = self.job.sampling
        conversation: list[dict[str, str]] = []
        follow_ups: list[str] = []
        evolved, evol_used, evol_prompt = "", "", ""
        ok = False

        # (a) task Evol, with fallbacks to the next planned evol type
        for attempt, evol_name in enumerate(p.task_evols):
            evol = next(e for e in task.evols if e.name == evol_name)
            messages, prompt = evolve_messages(
                self.book, evol, lang, task.display_name, p.instruction, p.reference_answer
            )
            step = f"evolve.{attempt}"
            c = await self._ask(p, acc, step, messages, s.evolve_max_tokens)
            if c is None:
                continue
            text, problem = self._judge_instruction(
                c, lang, [p.instruction], "copy_of_seed", evol.prompt, "evolve_max_tokens"
            )
            if problem:
                acc.fail(step, *problem)
                continue
            evolved, evol_used, evol_prompt, ok = text, evol_name, prompt, True
            break

        first_reply = ""
        if ok:
            conversation.append({"role": "user", "content": evolved})
            ok = await self._answer(p, acc, lang, conversation, "answer.1")
            first_reply = conversation[-1]["content"] if ok else ""
        pair_ok = ok

        # (c) further turns, each with its own multi-turn evol type
        turn = 2
        while ok and turn <= p.turns:
            multiturn = self.taxonomy.multiturn(p.multiturn_evols[turn - 2])
            step = f"user.{turn}"
            c = await self._ask(
                p, acc, step, next_user_messages(self.book, multiturn, lang, conversation),
                s.user_turn_max_tokens,
            )
            if c is None:
                ok = False
                break
            previous = [m["content"] for m in conversation if m["role"] == "user"]
            text, problem = self._judge_instruction(
                c, lang, previous, "repeated_turn", multiturn.prompt, "user_turn_max_tokens"
            )
            if problem:
                acc.fail(step, *problem)
                ok = False
                break
            conversation.append({"role": "user", "content": text})
            follow_ups.append(text)
            ok = await self._answer(p, acc, lang, conversation, f"answer.{turn}")
            turn += 1

        n_user = sum(1 for m in conversation if m["role"] == "user")
        first_mt = self.taxonomy.multiturn(p.multiturn_evols[0]) if p.multiturn_evols else None
        return {
            "id": None,  # assigned in final order at commit
            "task_evol_type": evol_used or p.task_evols[0],
            "task_evol_prompt": evol_prompt,
            "seed_prompt": p.instruction,
            "output_assistant_reply": first_reply,
            "evolved_user_prompt": evolved,
            "multiturn_evol_type": first_mt.name if first_mt else None,
            "multiturn_evol_prompt": first_mt.prompt if first_mt else None,
            "no_of_turns": n_user,
            "language": lang.name,
            "task": p.task,
            "evolved_multiturn_prompt": follow_ups,
            "conversation": conversation,
            "key": p.key,
            "kind": MULTITURN if p.turns > 1 else EVOLVED,
            "evol_slot": p.evol_slot,
            "multiturn_evol_types": list(p.multiturn_evols),
            "pair_status": "ok" if pair_ok else "failed",
            "seed_id": p.seed_id,
            "language_code": lang.code,
            "script": lang.script,
            "resource_level": lang.resource,
            "seed_source": p.seed_source,
            "work_unit": p.work_unit,
            "planned_turns": p.turns,
            "status": "ok" if ok and n_user == p.turns else "failed",
            "failures": acc.failures,
            "model": self.job.model,
            "engine": self.job.engine,
            "sampling": self._sampling_json,
            "config_hash": self.job.config_hash,
            "job_seed": self.job.job_seed,
            "prompt_tokens": acc.prompt_tokens,
            "completion_tokens": acc.completion_tokens,
            "usage": json.dumps(acc.by_stage, sort_keys=True),
            "m2l_version": __version__,
        }

    def _judge_instruction(
        self,
        c: Completion,
        lang: Language,
        previous: list[str],
        copy_reason: str,
        template: str,
        limit: str,
    ) -> tuple[str, tuple[str, str] | None]:
        """Clean a generated instruction or user turn and say what, if anything, is wrong."""
        text = clean_output(self.book, c.text)
        if c.finish_reason == "length":
            text = salvage_truncated(text) or ""
            if not text:
                value = getattr(self.job.sampling, limit)
                return "", ("truncated", f"cut at {limit}={value} with no whole sentence")
        problem = instruction_problem(
            self.book, text, lang, previous=previous, copy_reason=copy_reason, template=template
        )
        return text, problem

    async def _answer(
        self,
        p: PlannedConversation,
        acc: _Acc,
        lang: Language,
        conversation: list[dict[str, str]],
        step: str,
    ) -> bool:
        """Answer the last user turn with the whole history; False if the turn failed."""
        s = self.job.sampling
        c = await self._ask(p, acc, step, answer_messages(self.book, lang, conversation), s.max_tokens)
        if c is None:
            return False
        text = clean_answer(c.text)
        if not text:
            acc.fail(step, "empty", "no answer text")
            return False
        problem = script_check(self.book, text, lang)
        if problem:
            acc.fail(step, *problem)
            return False
        if c.finish_reason == "length":
            # kept, but never silently: the row says its answer was cut at max_tokens
            acc.fail(step, "truncated", f"answer hit max_tokens={s.max_tokens}")
        conversation.append({"role": "assistant", "content": text})
        return True
