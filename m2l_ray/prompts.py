"""Prompt rendering for each synthesis step, output cleaning and failure checks.

The wording lives in data/prompts.yaml and taxonomy/*.yaml; this module only
assembles chat messages and judges model output. Failure checks exist because a
failed evolution (a refusal, a copy of the seed, leaked template text, the wrong
script) silently poisons a dataset if it is emitted as a conversation.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

from m2l_ray.languages import Language
from m2l_ray.taxonomy import Evol
from m2l_ray.textchecks import (
    RefusalCheck,
    ScriptCheck,
    leaked_marker,
    normalise_phrases,
    template_echo,
    words,
)

Message = dict[str, str]

#: A generated instruction is short, and a refusal anywhere in its opening reads as one:
#: the window is wider than a curated turn's (curation.heuristics.refusal_window).
INSTRUCTION_REFUSAL_WINDOW = 300


@dataclass(frozen=True)
class PromptBook:
    evolve_system: str
    answer_system: str
    user_system: str
    strip_prefixes: tuple[re.Pattern[str], ...]
    cut_markers: tuple[re.Pattern[str], ...]
    leak_markers: tuple[str, ...]
    refusal: RefusalCheck  # prompts.yaml's generic_refusals on top of each language's phrases
    copy_similarity: float
    preface_max_chars: int = 80
    preface_keywords: tuple[str, ...] = ()
    script: ScriptCheck = ScriptCheck()  # the same thresholds curation's script check uses

    @classmethod
    def from_mapping(cls, d: dict[str, Any]) -> PromptBook:
        flags = re.IGNORECASE
        return cls(
            evolve_system=d["evolve_system"],
            answer_system=d["answer_system"],
            user_system=d["user_system"],
            strip_prefixes=tuple(re.compile(p, flags) for p in d["strip_prefixes"]),
            cut_markers=tuple(re.compile(p, flags) for p in d["cut_markers"]),
            leak_markers=tuple(m.lower() for m in d["leak_markers"]),
            refusal=RefusalCheck(INSTRUCTION_REFUSAL_WINDOW, normalise_phrases(d["generic_refusals"])),
            copy_similarity=float(d["copy_similarity"]),
            preface_max_chars=int(d.get("preface_max_chars", 80)),
            preface_keywords=tuple(k.lower() for k in d.get("preface_keywords", ())),
        )


@cache
def prompt_book() -> PromptBook:
    text = resources.files("m2l_ray").joinpath("data/prompts.yaml").read_text(encoding="utf-8")
    return PromptBook.from_mapping(yaml.safe_load(text))


# ------------------------------------------------------------------ messages


def evolve_messages(
    book: PromptBook, evol: Evol, lang: Language, task_name: str, seed: str, reference: str
) -> tuple[list[Message], str]:
    """Messages that ask for a harder instruction, and the rendered evol prompt (provenance)."""
    prompt = evol.render(language=lang.name, task=task_name, seed=seed, reference=reference)
    return [
        {"role": "system", "content": book.evolve_system.format(language=lang.name)},
        {"role": "user", "content": prompt},
    ], prompt


def answer_messages(book: PromptBook, lang: Language, conversation: Sequence[Message]) -> list[Message]:
    return [{"role": "system", "content": book.answer_system.format(language=lang.name)}, *conversation]


def render_history(conversation: Sequence[Message]) -> str:
    names = {"user": "User", "assistant": "Assistant"}
    return "\n".join(f"{names.get(m['role'], m['role'])}: {m['content']}" for m in conversation)


def next_user_messages(
    book: PromptBook, evol: Evol, lang: Language, conversation: Sequence[Message]
) -> list[Message]:
    last_user = next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")
    last_assistant = next(
        (m["content"] for m in reversed(conversation) if m["role"] == "assistant"), ""
    )
    prompt = evol.render(
        language=lang.name,
        history=render_history(conversation),
        last_user=last_user,
        last_assistant=last_assistant,
    )
    return [
        {"role": "system", "content": book.user_system.format(language=lang.name)},
        {"role": "user", "content": prompt},
    ]


# ------------------------------------------------------------------ parsing


def clean_output(book: PromptBook, text: str) -> str:
    """Strip what models wrap around the content: prefaces, labels, fences, quotes."""
    t = unicodedata.normalize("NFC", text or "").strip()
    t = re.sub(r"^```[\w-]*\s*\n(.*?)\n?```\s*$", r"\1", t, flags=re.DOTALL).strip()
    for _ in range(3):  # prefaces can stack: "Sure! Here is the new prompt: Prompt: ..."
        before = t
        for pat in book.strip_prefixes:
            t = pat.sub("", t, count=1).lstrip()
        t = _strip_preface_clause(book, t)
        if t == before:
            break
    for pat in book.cut_markers:
        m = pat.search(t)
        if m:
            t = t[: m.start()]
    t = t.strip()
    pairs = {'"': '"', "'": "'", "“": "”", "«": "»", "„": "“", "「": "」", "『": "』", "*": "*"}
    while len(t) >= 2 and t[0] in pairs and t.endswith(pairs[t[0]]) and t[0] not in t[1:-1]:
        t = t[1:-1].strip()
    return t.strip()


_SENTENCE_END = re.compile(r"[.?!。？！।۔؟።॥\"”»)]\s*$")
# ASCII stops need a following space (3.14, e.g.); CJK, Devanagari, Ethiopic ones don't
_SENTENCE_END_ANY = re.compile(r"[.?!][\"”»)]*(?=\s|$)|[。？！।۔؟።॥][\"”»)」]*")


def salvage_truncated(text: str, min_chars: int = 12) -> str | None:
    """A generated instruction cut at max_tokens: keep what is whole of it.

    Small models often write the instruction and then ramble on; the instruction itself
    is complete. Kept: the first paragraph if it ends a sentence, else everything up to
    the last sentence end. Nothing whole (no sentence end, or too short): None, and the
    step stays a 'truncated' failure.
    """
    para = re.split(r"\n\s*\n", text.strip(), maxsplit=1)
    first = para[0].strip()
    if len(para) == 2 and len(first) >= min_chars and _SENTENCE_END.search(first):
        return first
    ends = list(_SENTENCE_END_ANY.finditer(text))
    if ends:
        kept = text[: ends[-1].end()].strip()
        if len(kept) >= min_chars:
            return kept
    return None


_ANSWER_CUT = re.compile(r"\n\s*(?:user|human)\s*:", re.IGNORECASE)


def clean_answer(text: str) -> str:
    """Answers keep their wording; only a continuation into the user's side is cut."""
    t = unicodedata.normalize("NFC", text or "").strip()
    m = _ANSWER_CUT.search(t)
    return (t[: m.start()] if m else t).strip()


_PREFACE = re.compile(r"^([^\n:：]{1,200})[:：]\s*")


def _strip_preface_clause(book: PromptBook, t: str) -> str:
    m = _PREFACE.match(t)
    if not m or len(m.group(1)) > book.preface_max_chars or not t[m.end():].strip():
        return t
    clause = m.group(1).lower()
    if any(k in clause for k in book.preface_keywords):
        return t[m.end():].lstrip()
    return t


def instruction_problem(
    book: PromptBook,
    text: str,
    lang: Language,
    previous: Sequence[str] = (),
    copy_reason: str = "copy_of_seed",
    template: str = "",
) -> tuple[str, str] | None:
    """Why a generated instruction or user turn is unusable, or None if it is fine.

    Returns (reason, detail); reasons: empty, refusal, template_leakage, wrong_script,
    and ``copy_reason`` (copy_of_seed, or repeated_turn for later user turns). The
    refusal, leakage and script checks are the ones curation runs (m2l_ray/textchecks.py).
    """
    if len(text.strip()) < 2:
        return "empty", "no text after cleaning"
    phrase = book.refusal.phrase(text, lang.refusals)
    if phrase:
        return "refusal", phrase
    leaked = leaked_marker(text.lower(), book.leak_markers) or template_echo(text, template)
    if leaked:
        return "template_leakage", leaked
    script_problem = script_check(book, text, lang)
    if script_problem:
        return script_problem
    n = words(text)
    for prev in previous:
        p = words(prev)
        if n == p or difflib.SequenceMatcher(None, n, p).ratio() >= book.copy_similarity:
            return copy_reason, prev[:80]
    return None


def script_check(book: PromptBook, text: str, lang: Language) -> tuple[str, str] | None:
    """("wrong_script", detail) when too few of the text's letters are in the language's script."""
    ratio = book.script.wrong_ratio(text, lang.script)
    if ratio is not None:
        return "wrong_script", f"{ratio:.2f} of letters in {lang.script}"
    return None
