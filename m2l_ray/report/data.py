"""The numbers of a report: what it shows, and the parts computed from stats.json alone.

``ReportData`` is everything the page shows; ``funnel``, ``drops_per_language`` and
``reason_order`` need nothing but stats.json, so the dataset card (card.py) uses them
without reading the output's shards. The drop reasons and their order come from
curation's filter list (m2l_ray/curation/filters), which imports no Ray: a filter added
there shows up in the report without editing it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from m2l_ray.curation.filters import HEURISTIC_REASONS, LID_REASONS, REASON_ORDER

RESOURCE_ORDER = ("high", "mid", "low")

#: The funnel of one language: (key, label). Seeds are counted in seeds, the rest in
#: generated rows (evolved pairs and multi-turn conversations).
STAGES: tuple[tuple[str, str], ...] = (
    ("seeds_usable", "seeds usable"),
    ("seeds_selected", "seeds selected"),
    ("generated", "generated"),
    ("generation_ok", "generation ok"),
    ("after_heuristics", "after heuristics"),
    ("after_lid", "after LID"),
    ("kept", "kept (after dedup)"),
)
ROW_STAGES = tuple(k for k, _ in STAGES[2:])

SAMPLES_PER_REASON = 3
SAMPLES_PER_LANGUAGE = 2
TURN_CHARS = 700  # a sample turn is cut here: enough to judge it, short enough to scan
SAMPLE_TURNS = 8



@dataclass
class Sample:
    """One conversation as the report shows it (already truncated, not yet escaped)."""

    key: str
    language: str
    task: str
    kind: str
    evol_type: str | None
    multiturn_types: list[str]
    turns: list[tuple[str, str]]
    failures: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    drop_reason: str | None = None
    drop_turn: int | None = None
    hidden_turns: int = 0


@dataclass
class LidStats:
    """LID of one language: the scores the filter compared with its threshold."""

    mode: str
    threshold: float
    expected_scores: list[float] = field(default_factory=list)
    turns_model: int = 0  # turns fastText scored
    turns_script: int = 0  # turns judged by their script alone (language unknown to the model)

    @property
    def script_share(self) -> float | None:
        judged = self.turns_model + self.turns_script
        return self.turns_script / judged if judged else None

    @property
    def below_threshold(self) -> int:
        return sum(s < self.threshold for s in self.expected_scores)


@dataclass
class ReportData:
    """Everything the page shows; numbers from stats.json where it has them."""

    title: str
    output_uri: str
    config_hash: str
    versions: dict[str, str]
    config: dict[str, Any]
    stats: dict[str, Any]
    generated_at: str
    languages: list[str]  # ordered by resource level, then code
    resource: dict[str, str]
    funnel: dict[str, dict[str, int | None]]
    drops: dict[str, dict[str, int]]  # language -> reason -> rows (first reason of a row)
    failures: dict[str, dict[str, int]]  # "step:reason" -> language -> failed steps
    lid: dict[str, LidStats]
    rows: dict[str, dict[str, Counter]]  # config -> "language"|"task"|"kind" -> Counter
    evol_types: Counter
    multiturn_types: Counter
    turns: Counter  # no_of_turns of full_data's multi-turn conversations
    tokens: dict[str, dict[str, Any]]  # language -> usage entry (stats.json usage.by_language)
    dropped_samples: dict[str, list[Sample]]
    kept_samples: dict[str, list[Sample]]
    seeds_per_language_known: bool = False


def funnel(stats: Mapping[str, Any], seeds: Mapping[str, Mapping[str, int]] | None = None,
           languages: Iterable[str] | None = None) -> dict[str, dict[str, int | None]]:
    """Rows left after each step, per language, from stats.json alone.

    A dropped row has one reason (the first problem in curation's order), so taking the
    drops of each filter group (curation's heuristics, then its language ID) off in turn
    gives the rows that survive each step exactly; what is left after the last group is
    stats.json's ``kept``.
    """
    per = stats.get("per_language") or {}
    seeds = seeds or {}
    out: dict[str, dict[str, int | None]] = {}
    drops = drops_per_language(stats)
    for code in languages if languages is not None else sorted(per):
        c = per.get(code, {})
        d = drops.get(code, {})
        ok = c.get("ok")
        heur = sum(d.get(r, 0) for r in HEURISTIC_REASONS)
        lid = sum(d.get(r, 0) for r in LID_REASONS)
        s = seeds.get(code, {})
        out[code] = {
            "seeds_usable": s.get("usable"),
            "seeds_selected": s.get("selected"),
            "generated": c.get("raw"),
            "generation_ok": ok,
            "after_heuristics": None if ok is None else ok - heur,
            "after_lid": None if ok is None else ok - heur - lid,
            "kept": c.get("kept"),
        }
    return out


def drops_per_language(stats: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """language -> drop reason -> rows, as curation counted them (stats.json)."""
    per = ((stats.get("curation") or {}).get("per_language")) or {}
    return {code: {r: int(n) for r, n in (c.get("dropped") or {}).items()} for code, c in per.items()}


def reason_order(stats: Mapping[str, Any]) -> list[str]:
    """Every drop reason of this output, in curation's order (unknown ones last)."""
    known = list(REASON_ORDER)
    seen = {r for d in drops_per_language(stats).values() for r in d} | set(stats.get("drop_reasons") or {})
    return [r for r in known if r in seen] + sorted(seen - set(known))


def truncate(text: str | None, limit: int = TURN_CHARS) -> str:
    """A turn cut to ``limit`` characters, saying how much was left out."""
    text = text or ""
    return text if len(text) <= limit else f"{text[:limit]}… [{len(text) - limit} more characters]"

