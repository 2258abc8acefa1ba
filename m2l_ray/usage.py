"""Token usage of a job: per stage, per language, and cost when prices are set.

Summed from the ``usage`` column every row carries, so it is the same for every
engine and counts what the dataset cost to make, whichever run paid for it.
``settings`` is anything with ``cost(prompt, completion) -> float | None`` and the
``price_per_1k_*`` fields (the openai engine's settings).
"""

from __future__ import annotations

import json
from typing import Any


def usage_summary(rows: Any, settings: Any = None) -> dict[str, Any]:
    """Tokens per stage and per language (and their cost when prices are set).

    ``rows``: a pyarrow Table or a list of row dicts with ``usage`` (JSON
    {"evolve"|"answer"|"user": [prompt tokens, completion tokens(, requests)]}) and
    ``language_code``. Tokens of cache hits count as in the original request: this is
    what the dataset cost to make, whichever run paid for it.
    """
    if hasattr(rows, "select"):
        rows = rows.select(["usage", "language_code"]).to_pylist()
    by_stage: dict[str, list[int]] = {}
    by_lang: dict[str, list[int]] = {}
    by_lang_stage: dict[str, dict[str, list[int]]] = {}
    for r in rows:
        usage = json.loads(r["usage"] or "{}")
        lang = r["language_code"]
        for stage, vals in usage.items():
            n = int(vals[2]) if len(vals) > 2 else 0
            for acc in (by_stage.setdefault(stage, [0, 0, 0]), by_lang.setdefault(lang, [0, 0, 0]),
                        by_lang_stage.setdefault(lang, {}).setdefault(stage, [0, 0, 0])):
                acc[0] += int(vals[0])
                acc[1] += int(vals[1])
                acc[2] += n

    def entry(pcn: list[int]) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt_tokens": pcn[0], "completion_tokens": pcn[1], "requests": pcn[2]}
        cost = settings.cost(pcn[0], pcn[1]) if settings else None
        if cost is not None:
            out["cost"] = round(cost, 6)
        return out

    total = [sum(v[i] for v in by_stage.values()) for i in range(3)]
    out: dict[str, Any] = {
        "total": entry(total),
        "by_stage": {k: entry(v) for k, v in sorted(by_stage.items())},
        "by_language": {k: entry(v) for k, v in sorted(by_lang.items())},
        "by_language_stage": {
            lang: {k: entry(v) for k, v in sorted(st.items())} for lang, st in sorted(by_lang_stage.items())
        },
    }
    if settings and settings.cost(0, 0) is not None:
        out["price_per_1k"] = {
            "prompt": settings.price_per_1k_prompt_tokens or 0.0,
            "completion": settings.price_per_1k_completion_tokens or 0.0,
        }
    return out
