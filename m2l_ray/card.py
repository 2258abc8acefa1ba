"""The dataset card written beside every output: what was made, how, and how well.

Answers the reviewers' reproducibility complaint about M2Lingual: the card carries
the full config (and its hash), the versions, and per-language pass rates of every
step, so a reader sees where low-resource languages lost rows.
"""

from __future__ import annotations

from typing import Any

import yaml

from m2l_ray.config import JobConfig


def dataset_card(cfg: JobConfig, summary: dict[str, Any], shards: list[dict[str, Any]]) -> str:
    rows = sum(s["rows"] for s in shards)
    lines = [
        f"# {cfg.name}",
        "",
        "Synthetic multilingual multi-turn instruction data made with m2l-ray "
        "(M2Lingual method: task Evol, then multi-turn Evol).",
        "",
        f"- conversations: {rows} in {len(shards)} Parquet shard(s) under `final/`",
        f"- model: `{cfg.engine.model}` via `{cfg.engine.kind}`",
        f"- config hash: `{cfg.config_hash()}`, job seed {cfg.seed}",
        f"- seeds read {summary.get('seeds_read')}, quarantined {summary.get('seeds_quarantined')}, "
        f"selected {summary.get('seeds_selected')}",
        f"- generated {summary.get('conversations_raw')}: ok {summary.get('conversations_ok')}, "
        f"failed {summary.get('conversations_failed')}",
        f"- tokens: prompt {summary.get('prompt_tokens')}, completion {summary.get('completion_tokens')}",
        "",
        "## Per language",
        "",
        "| language | generated | generation ok | kept after curation | pass rate |",
        "|---|---|---|---|---|",
    ]
    for code, c in summary.get("per_language", {}).items():
        rate = c["kept"] / c["raw"] if c["raw"] else 0.0
        lines.append(f"| {code} | {c['raw']} | {c['ok']} | {c['kept']} | {rate:.0%} |")
    lines += [
        "",
        "## Failed generation steps",
        "",
        *(f"- {k}: {v}" for k, v in summary.get("failed_steps", {}).items()),
        "",
        "## Curation drops",
        "",
        *(f"- {k}: {v}" for k, v in summary.get("drop_reasons", {}).items()),
        "",
        "## Config",
        "",
        "```yaml",
        yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)
