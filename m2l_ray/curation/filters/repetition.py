"""An answer stuck in a loop: too many of its n-grams repeat an earlier one."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from m2l_ray.curation.config import CurationConfig
from m2l_ray.curation.filters.base import Conversation, LanguageTable, Turn, TurnFilter, overrides

_WORD = re.compile(r"\w+")

if TYPE_CHECKING:
    from m2l_ray.languages import Language, LanguageRegistry


def repeat_ratio(text: str, char_segmented: bool, n_word: int, n_char: int) -> tuple[float, int]:
    """(share of n-grams that repeat an earlier one, number of n-grams).

    Word n-grams, or character n-grams for languages written without spaces (one
    "word" of Chinese would be a whole sentence).
    """
    if char_segmented:
        units: Sequence[str] = "".join(text.split()).lower()
        n = n_char
    else:
        units = _WORD.findall(text.lower())
        n = n_word
    total = len(units) - n + 1
    if total <= 0:
        return 0.0, 0
    grams = {tuple(units[i : i + n]) if not char_segmented else units[i : i + n]
             for i in range(total)}
    return 1.0 - len(grams) / total, total


@dataclass(frozen=True)
class _Limits:
    max_ratio: float
    min_ngrams: int  # shorter turns are not judged
    char_segmented: bool


class RepeatedNgrams(TurnFilter):
    """``curation.heuristics.max_repeat_ratio`` of a turn's n-grams repeat (per-language overrides)."""

    name = "repeated_ngrams"
    reasons = (name,)

    def __init__(self, limits: LanguageTable[_Limits], n_word: int, n_char: int) -> None:
        self.limits = limits
        self.n_word = n_word
        self.n_char = n_char

    @classmethod
    def build(cls, cfg: CurationConfig, registry: LanguageRegistry,
              codes: Sequence[str]) -> RepeatedNgrams:
        h = cfg.heuristics

        def limits(lang: Language | None) -> _Limits:
            ov = overrides(h, lang)
            return _Limits(float(ov.get("max_repeat_ratio", h.max_repeat_ratio)),
                           int(ov.get("repeat_min_ngrams", h.repeat_min_ngrams)),
                           bool(lang is not None and lang.segmentation == "char"))

        return cls(LanguageTable(registry, codes, limits), h.repeat_ngram, h.repeat_char_ngram)

    def check_turn(self, turn: Turn, conv: Conversation) -> str | None:
        lim = self.limits[conv.code]
        ratio, total = repeat_ratio(turn.text, lim.char_segmented, self.n_word, self.n_char)
        return self.name if total >= lim.min_ngrams and ratio > lim.max_ratio else None
