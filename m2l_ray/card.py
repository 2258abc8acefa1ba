"""The dataset card written beside every output: what was made, how, and how well.

It is the output folder's ``README.md``, Hugging Face style: its YAML header lists the
three configs with their ``data_files`` (so ``datasets.load_dataset(OUTPUT, name)``
works), the languages, task categories, size category and license. Its body answers
the reviewers' reproducibility complaint about M2Lingual: the full config (and its
hash), the versions, the per-language funnel of every step (grouped by resource
level), failure and drop reasons and tokens, so a reader sees where low-resource
languages lost rows; report.html beside it has the plots and sample conversations.
"""

from __future__ import annotations

from typing import Any

import yaml

from m2l_ray.config import JobConfig
from m2l_ray.layout import REPORT_KEY
from m2l_ray.report import RESOURCE_ORDER, STAGES, drops_per_language, funnel, reason_order
from m2l_ray.schema import CONFIGS

_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"))


def size_category(rows: int) -> str:
    return next((label for limit, label in _SIZES if rows < limit), "10M<n<100M")


def card_header(cfg: JobConfig, summary: dict[str, Any], shards: list[dict[str, Any]]) -> dict[str, Any]:
    """The YAML header: every config with the shards it has (paths relative to the card).
    A config with no rows is left out: ``datasets`` can't load a split of no rows ("corresponds
    to no data"), and JSONL has no shard for it at all; its count (0) is in the card's text."""
    rows = summary.get("rows", {})
    paths = {name: [s["key"] for s in shards if s.get("config") == name and s.get("rows", 1)]
             for name in CONFIGS}
    return {
        "pretty_name": cfg.name,
        "license": cfg.license,
        "language": sorted(summary.get("per_language", {})),
        "task_categories": ["text-generation"],
        "size_categories": [size_category(int(rows.get("full_data", 0)))],
        "tags": ["synthetic", "multilingual", "multi-turn", "m2lingual", "m2l-ray"],
        "configs": [
            {"config_name": name,
             "data_files": [{"split": "train", "path": paths[name]}],
             **({"default": True} if name == "full_data" else {})}
            for name in CONFIGS if paths[name]
        ],
    }


def dataset_card(cfg: JobConfig, summary: dict[str, Any], shards: list[dict[str, Any]],
                 versions: dict[str, str] | None = None) -> str:
    """The whole card: the YAML header (card_header, unchanged) and a summary of the run.

    The summary is what report.html shows, without plots or samples: the per-language
    funnel, why generation failed and why curation dropped rows, tokens, and enough to
    reproduce the run (config hash, versions, the full config).
    """
    if versions is None:
        from m2l_ray.provenance import versions as installed_versions

        versions = installed_versions()
    header = yaml.safe_dump(card_header(cfg, summary, shards), sort_keys=False, allow_unicode=True)
    lines = [
        "---",
        header.rstrip(),
        "---",
        "",
        f"# {cfg.name}",
        "",
        "Synthetic multilingual multi-turn instruction data made with m2l-ray, which "
        "implements the M2Lingual method (task Evol of each seed, then multi-turn Evol of a "
        "share of the evolved pairs). Curation (heuristics, fastText LID, MinHash dedup) is "
        "m2l-ray's addition to the method.",
        "",
        f"The run's report, with plots per language, failure and drop reasons and sample "
        f"conversations (kept and dropped), is [{REPORT_KEY}]({REPORT_KEY}) beside this card "
        f"(self-contained; rebuild it with `m2l report OUTPUT`).",
        "",
        *_overview(cfg, summary),
        *_funnel_table(cfg, summary),
        *_failures(summary),
        *_drops(summary),
        *_tokens(summary),
        "## Reproducibility",
        "",
        f"- config hash: `{cfg.config_hash()}`, job seed {cfg.seed}",
        *(f"- {name}: {v}" for name, v in sorted(versions.items())),
        "",
        "## Config",
        "",
        "```yaml",
        yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _overview(cfg: JobConfig, summary: dict[str, Any]) -> list[str]:
    rows = summary.get("rows", {})
    pairs, multi = summary.get("evolved_pairs", {}), summary.get("multiturn_conversations", {})
    return [
        "| config | rows | holds |",
        "|---|---|---|",
        f"| seed_data | {rows.get('seed_data', 0)} | the selected seeds with their reference answers |",
        f"| seed_evol_data | {rows.get('seed_evol_data', 0)} | evolved instruction-response pairs (one turn) |",
        f"| full_data | {rows.get('full_data', 0)} | seeds + evolved pairs + multi-turn conversations |",
        "",
        f"- model: `{cfg.engine.model}` via `{cfg.engine.kind}`",
        f"- config hash: `{cfg.config_hash()}`, job seed {cfg.seed}",
        f"- seeds read {summary.get('seeds_read')}, quarantined {summary.get('seeds_quarantined')}, "
        f"selected {summary.get('seeds_selected')}; {cfg.evol.per_seed} evolutions per seed, "
        f"multi-turn share {cfg.evol.multiturn_share:g}",
        f"- evolved pairs: generated {pairs.get('generated')}, ok {pairs.get('ok')}, "
        f"kept {pairs.get('kept')}; multi-turn conversations: generated {multi.get('generated')}, "
        f"ok {multi.get('ok')}, kept {multi.get('kept')}",
        f"- tokens: prompt {summary.get('prompt_tokens')}, completion {summary.get('completion_tokens')}",
        "",
    ]


def _resource_levels(cfg: JobConfig, codes: list[str]) -> dict[str, str]:
    """Resource level per language code (the registry's), "?" for a code it lacks."""
    try:
        from m2l_ray.context import load_registry

        registry = load_registry(cfg)
    except Exception:  # noqa: BLE001 - the card must not fail over a label
        return dict.fromkeys(codes, "?")
    out = {}
    for code in codes:
        lang = registry.resolve(code)
        out[code] = lang.resource if lang is not None else "?"
    return out


def _cell(v: Any) -> str:
    return "—" if v is None else str(v)


def _funnel_table(cfg: JobConfig, summary: dict[str, Any]) -> list[str]:
    """Rows left after each step per language, grouped high -> mid -> low resource."""
    seeds = summary.get("seeds_per_language")
    rows = funnel(summary, seeds if isinstance(seeds, dict) else None)
    levels = _resource_levels(cfg, list(rows))
    order = sorted(rows, key=lambda c: (_rank(levels.get(c)), c))
    stages = [(k, label) for k, label in STAGES if isinstance(seeds, dict) or not k.startswith("seeds_")]
    lines = [
        "## Per-language funnel",
        "",
        "Generated rows (evolved pairs and multi-turn conversations) left after each step; "
        "a dropped row counts under its first problem. Seed rows are not curated.",
        "",
        "| language | resource | " + " | ".join(label for _, label in stages) + " | pass rate |",
        "|---|---|" + "---|" * len(stages) + "---|",
    ]
    for code in order:
        f = rows[code]
        rate = f"{f['kept'] / f['generated']:.0%}" if f.get("generated") else "—"
        lines.append(f"| {code} | {levels.get(code, '?')} | "
                     + " | ".join(_cell(f.get(k)) for k, _ in stages) + f" | {rate} |")
    return lines + [""]


def _rank(level: str | None) -> int:
    return RESOURCE_ORDER.index(level) if level in RESOURCE_ORDER else len(RESOURCE_ORDER)


def _failures(summary: dict[str, Any]) -> list[str]:
    failed = summary.get("failed_steps", {})
    lines = ["## Failed generation steps", ""]
    if not failed:
        return lines + ["None.", ""]
    lines += ["| step:reason | failed steps |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in failed.items()]
    return lines + [""]


def _drops(summary: dict[str, Any]) -> list[str]:
    lines = ["## Curation drops", ""]
    reasons = reason_order(summary)
    if not reasons:
        return lines + ["None.", ""]
    per = drops_per_language(summary)
    lines += ["| language | " + " | ".join(reasons) + " |", "|---|" + "---|" * len(reasons)]
    for code in sorted(per):
        lines.append(f"| {code} | " + " | ".join(str(per[code].get(r, 0)) for r in reasons) + " |")
    totals = summary.get("drop_reasons", {})
    lines.append("| **all** | " + " | ".join(str(totals.get(r, 0)) for r in reasons) + " |")
    return lines + [""]


def _tokens(summary: dict[str, Any]) -> list[str]:
    usage = summary.get("usage") or {}
    total = usage.get("total") or {}
    by_lang = usage.get("by_language") or {}
    has_cost = "cost" in total
    cols = ["prompt tokens", "completion tokens", "requests"] + (["cost"] if has_cost else [])
    lines = ["## Tokens", "", "| language | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]

    def row(name: str, e: dict[str, Any]) -> str:
        vals = [e.get("prompt_tokens", 0), e.get("completion_tokens", 0), e.get("requests", 0)]
        if has_cost:
            vals.append(e.get("cost"))
        return f"| {name} | " + " | ".join(_cell(v) for v in vals) + " |"

    lines += [row(code, e) for code, e in by_lang.items()]
    lines.append(row("**all**", total))
    if not has_cost:
        lines += ["", "No prices set (engine.openai.price_per_1k_*), so no cost."]
    return lines + [""]
