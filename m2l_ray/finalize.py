"""Raw items in, the three public configs out: curation, the split, and the run's counts.

Raw attempts become evolved pairs and multi-turn conversations (``rows``); those are
curated together (dedup across the whole output, every language); the seed rows are
the validated input and go in as they are. Nothing here touches storage: the runner
writes the tables this returns (deterministic content, so deterministic shards).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from m2l_ray.context import JobContext
from m2l_ray.engines.registry import engine_spec
from m2l_ray.ray_session import ray_init
from m2l_ray.schema import RAW_SCHEMA
from m2l_ray.seeds.records import Seed
from m2l_ray.usage import usage_summary


@dataclass
class Finalized:
    tables: dict[str, pa.Table]  # config name -> its rows, in final order
    dropped: pa.Table  # what curation dropped, with the reason, sorted by key
    summary: dict[str, Any]  # counts for stats.json


def finalize(ctx: JobContext, raw: pa.Table, selected: Sequence[Seed]) -> Finalized:
    """Curate the generated rows and split seeds + kept rows into the three configs."""
    import ray

    from m2l_ray.curation.stage import curate
    from m2l_ray.rows import generated_rows, seed_rows, split_configs

    cfg = ctx.cfg
    ray_init()
    generated = pa.Table.from_pylist(generated_rows(raw), schema=RAW_SCHEMA)
    result = curate(ray.data.from_arrow(generated), ctx.curation, ctx.registry)
    kept = _materialize(result.kept)
    dropped = _materialize(result.dropped)
    if dropped.num_rows:
        dropped = dropped.sort_by([("key", "ascending")])
    job = {"model": cfg.engine.model, "engine": cfg.engine.kind, "config_hash": cfg.config_hash(),
           "job_seed": cfg.seed}
    seeds = pa.Table.from_pylist(seed_rows(selected, ctx.registry, job), schema=RAW_SCHEMA)
    tables = split_configs(pa.concat_tables([seeds, kept], promote_options="default"))
    summary = summarise(raw, generated, kept, result.stats(), engine_spec(cfg.engine.kind).pricing(cfg))
    summary["rows"] = {name: t.num_rows for name, t in tables.items()}
    return Finalized(tables, dropped, summary)


def lines(f: Finalized, raw_items: int) -> list[str]:
    """What a person reads about curation and the output."""
    s = f.summary
    out = []
    cost = s["usage"]["total"].get("cost")
    if cost is not None:
        out.append(f"[cost] {cost:.4f} for {s['usage']['total']['prompt_tokens']} prompt + "
                   f"{s['usage']['total']['completion_tokens']} completion tokens (all runs of this job)")
    out.append(f"[curate] {s['conversations_raw']} generated rows ({raw_items} items in raw/), "
               f"{s['conversations_final']} kept, {f.dropped.num_rows} dropped {s['drop_reasons']}")
    out.append("[output] " + ", ".join(f"{name}: {n} rows" for name, n in s["rows"].items()))
    return out


def _materialize(ds: Any) -> pa.Table:
    tables = [pa.Table.from_pandas(b) if not isinstance(b, pa.Table) else b
              for b in ds.iter_batches(batch_size=None, batch_format="pyarrow")]
    if not tables:  # keep the columns even when nothing is left: readers need the schema
        schema = ds.schema()
        base = getattr(schema, "base_schema", schema)
        return base.empty_table() if isinstance(base, pa.Schema) else RAW_SCHEMA.empty_table()
    return pa.concat_tables(tables, promote_options="default")


def summarise(
    raw: pa.Table, generated: pa.Table, kept: pa.Table, cur_stats: dict[str, Any],
    price_settings: Any = None,
) -> dict[str, Any]:
    """Counts for stats.json. "conversations" are the generated rows (evolved pairs, one
    turn, and multi-turn conversations); failures and tokens come from raw/, where each
    request is counted once."""
    failures: Counter[str] = Counter()
    for row_failures in raw.column("failures").to_pylist():
        for f in row_failures or []:
            failures[f"{f['step'].split('.')[0]}:{f['reason']}"] += 1
    per_lang: dict[str, dict[str, int]] = defaultdict(lambda: {"raw": 0, "ok": 0, "kept": 0})
    for code, status in zip(generated.column("language_code").to_pylist(),
                            generated.column("status").to_pylist(), strict=True):
        per_lang[code]["raw"] += 1
        per_lang[code]["ok"] += status == "ok"
    if kept.num_rows:
        for code in kept.column("language_code").to_pylist():
            per_lang[code]["kept"] += 1
    status = Counter(generated.column("status").to_pylist())
    kinds = Counter(zip(generated.column("kind").to_pylist(), generated.column("status").to_pylist(),
                        strict=True))
    kept_kinds = Counter(kept.column("kind").to_pylist()) if kept.num_rows else Counter()
    return {
        "items_raw": raw.num_rows,
        "conversations_raw": generated.num_rows,
        "conversations_ok": status.get("ok", 0),
        "conversations_failed": status.get("failed", 0),
        "conversations_final": kept.num_rows,
        "evolved_pairs": {"generated": kinds[("evolved", "ok")] + kinds[("evolved", "failed")],
                          "ok": kinds[("evolved", "ok")], "kept": kept_kinds["evolved"]},
        "multiturn_conversations": {
            "generated": kinds[("multiturn", "ok")] + kinds[("multiturn", "failed")],
            "ok": kinds[("multiturn", "ok")], "kept": kept_kinds["multiturn"]},
        "failed_steps": dict(sorted(failures.items())),
        "prompt_tokens": int(pc.sum(raw.column("prompt_tokens")).as_py() or 0),
        "completion_tokens": int(pc.sum(raw.column("completion_tokens")).as_py() or 0),
        "per_language": {k: dict(v) for k, v in sorted(per_lang.items())},
        "usage": usage_summary(raw, price_settings),
        "drop_reasons": cur_stats.get("drop_reasons", {}),
        "curation": cur_stats,
    }
