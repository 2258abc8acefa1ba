"""Checks on generated text that synthesis and curation both run: refusal, script, template leakage.

Synthesis judges each generated instruction and answer before it becomes the next turn
(prompts.instruction_problem, prompts.script_check); curation judges every turn of the
finished rows again (curation/filters, curation/langid). Both ask the same questions
(did the model refuse, is the text in the language's script, did our own prompt
scaffolding leak into it), so the checks and the definitions of their knobs live here,
once. Each side keeps its own values where the texts differ: synthesis reads an
instruction's opening 300 characters for a refusal and adds prompts.yaml's generic
phrases, curation reads ``curation.heuristics.refusal_window`` characters of a turn and
``curation.heuristics.extra_refusals``; the script thresholds are the same on both sides
(``ScriptCheck``'s defaults, which ``curation.lid.min_script_ratio`` /
``script_min_letters`` may change for curation).

Nothing here imports a language registry or the curation config: callers pass the
phrases, the script code and the markers.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from m2l_ray.scripts import script_ratio


@dataclass(frozen=True)
class ScriptCheck:
    """A text is in the wrong script when too few of its letters belong to the language's script.

    ``min_letters``: shorter texts (a number, a name, "OK") are not judged at all, since
    a handful of Latin letters in a Hindi answer says nothing about the answer.
    """

    min_ratio: float = 0.5
    min_letters: int = 12

    def wrong_ratio(self, text: str, script: str) -> float | None:
        """The share of letters in ``script`` when it is below ``min_ratio``; None when fine or too short."""
        letters = sum(1 for c in text if c.isalpha())  # letters as script_ratio counts them
        if letters < self.min_letters:
            return None
        ratio = script_ratio(text, script)
        return ratio if ratio < self.min_ratio else None


@dataclass(frozen=True)
class RefusalCheck:
    """A refusal phrase near the start of a text: the model declined instead of answering.

    Phrases are matched as lowercase, NFC-normalised substrings of the text's first
    ``window`` characters (None: the whole text); later in a text a phrase is more often
    quoted dialogue ("Then the fox said: I am sorry") than a refusal. ``extra`` phrases
    are checked before the language's own ones (refusals.yaml), so the phrase reported
    for a text is stable.
    """

    window: int | None = 200
    extra: tuple[str, ...] = ()

    def phrase(self, text: str, phrases: Iterable[str] = ()) -> str | None:
        """The first phrase (of ``extra``, then ``phrases``) found in the text's window, or None."""
        head = unicodedata.normalize("NFC", text.lower()[: self.window])
        for phrase in (*self.extra, *phrases):
            if phrase and phrase in head:
                return phrase
        return None


def normalise_phrases(phrases: Iterable[str]) -> tuple[str, ...]:
    """Phrases as ``RefusalCheck`` matches them: lowercase, NFC."""
    return tuple(unicodedata.normalize("NFC", p).lower() for p in phrases)


#: Chat-template tokens and role labels that must never reach the data set.
CHAT_TEMPLATE_PATTERNS = (
    r"<\|(?:im_start|im_end|eot_id|start_header_id|end_header_id|endoftext|assistant|user|"
    r"system|end)\|>",
    r"\[/?INST\]",
    r"<</?SYS>>",
    r"</s>|<s>",
    r"(?im)^\s*(?:###\s*)?(?:user|assistant|human|gpt)\s*:\s*$",
)


def leaked_marker(low: str, markers: Iterable[str]) -> str | None:
    """The first of our prompt-scaffolding ``markers`` (lowercase) found in the lowercased text."""
    return next((m for m in markers if m in low), None)


_PLACEHOLDER = re.compile(r"\{[a-z_]+\}")
_LEAK_NGRAM = 6


def words(text: str) -> str:
    """Lowercased words without punctuation, single-spaced (how copies and echoes are compared)."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def template_echo(text: str, template: str) -> str | None:
    """A run of six words copied from the prompt template that asked for ``text``: the model echoed it."""
    if not template:
        return None
    t_words = words(_PLACEHOLDER.sub(" | ", template)).split()
    o_words = words(text).split()
    grams = {tuple(t_words[i : i + _LEAK_NGRAM]) for i in range(len(t_words) - _LEAK_NGRAM + 1)}
    for i in range(len(o_words) - _LEAK_NGRAM + 1):
        g = tuple(o_words[i : i + _LEAK_NGRAM])
        if g in grams:
            return " ".join(g)
    return None
