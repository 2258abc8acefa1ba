"""From raw attempts to the rows of the three output configs, as the public dataset has them.

raw/ holds one row per planned item (one evolution of a seed, grown into a multi-turn
conversation when the plan says so). The output has three kinds of row:

* ``seed``: each selected seed with a reference answer, as an instruction-response pair
  (human-written input; validated at intake, not curated);
* ``evolved``: every evolved pair (evolution + first answer), single turn; a multi-turn
  attempt whose later turn failed still yields its pair;
* ``multiturn``: every multi-turn conversation, beside the pair it grew from.

``seed_data`` holds the seed rows, ``seed_evol_data`` the evolved pairs, ``full_data``
all three (schema.CONFIGS). ``id`` (int32, as public) is the row's position in
``full_data`` sorted by ``key``, so a row has the same id in every config it is in.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from m2l_ray import __version__
from m2l_ray.languages import LanguageRegistry
from m2l_ray.schema import CONFIGS, EVOLVED, MULTITURN, RAW_SCHEMA, SEED
from m2l_ray.seeds.records import Seed

#: the steps of an evolved pair; the rest belong to the multi-turn conversation only
_PAIR_STEPS = ("evolve", "answer.1")


def seed_rows(seeds: Sequence[Seed], registry: LanguageRegistry, job: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per selected seed that has a reference answer (a pair needs a response)."""
    out = []
    for s in seeds:
        if not s.reference_answer:
            continue
        lang = registry.get(s.language_code)
        out.append(_blank() | {
            "seed_prompt": s.instruction,
            "output_assistant_reply": s.reference_answer,
            "no_of_turns": 1,
            "language": lang.name,
            "task": s.task,
            "evolved_multiturn_prompt": [],
            "conversation": [{"role": "user", "content": s.instruction},
                             {"role": "assistant", "content": s.reference_answer}],
            "key": s.seed_id,
            "kind": SEED,
            "multiturn_evol_types": [],
            "pair_status": "ok",
            "seed_id": s.seed_id,
            "language_code": lang.code,
            "script": lang.script,
            "resource_level": lang.resource,
            "seed_source": s.source,
            "planned_turns": 1,
            "status": "ok",
            "failures": [],
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "usage": "{}",
            "m2l_version": __version__,
            **job,
        })
    return out


def _blank() -> dict[str, Any]:
    return {f.name: None for f in RAW_SCHEMA}


def generated_rows(raw: pa.Table) -> list[dict[str, Any]]:
    """Raw attempts -> evolved-pair rows and multi-turn rows (a multi-turn attempt gives both)."""
    out = []
    for r in raw.to_pylist():
        if r["kind"] != MULTITURN:
            out.append(r)
            continue
        pair_failures = [f for f in r["failures"] or [] if f["step"].startswith(_PAIR_STEPS)]
        out.append({
            **r,
            "kind": EVOLVED,
            "multiturn_evol_type": None,
            "multiturn_evol_prompt": None,
            "multiturn_evol_types": [],
            "no_of_turns": min(1, r["no_of_turns"] or 0),
            "evolved_multiturn_prompt": [],
            "conversation": (r["conversation"] or [])[:2],
            "planned_turns": 1,
            "status": r["pair_status"],
            "failures": pair_failures,
            # tokens are counted once, on the multi-turn row that paid for them
            "prompt_tokens": None,
            "completion_tokens": None,
            "usage": json.dumps({"counted_on": f"{r['key']}-mt"}),
        })
        out.append({**r, "key": f"{r['key']}-mt"})
    return out


def assign_ids(tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """Ids by position in full_data's key order; every config sorted by key."""
    full = tables["full_data"]
    keys = sorted(full.column("key").to_pylist())
    ids = {k: i for i, k in enumerate(keys)}
    out = {}
    for name, t in tables.items():
        t = t.sort_by([("key", "ascending")]) if t.num_rows else t
        col = pa.array([ids[k] for k in t.column("key").to_pylist()], pa.int32())
        out[name] = t.set_column(t.schema.get_field_index("id"), "id", col)
    return out


def split_configs(rows: pa.Table) -> dict[str, pa.Table]:
    """The three configs from the kept rows of every kind (schema.CONFIGS)."""
    import pyarrow.compute as pc

    tables = {}
    for name, kinds in CONFIGS.items():
        mask = pc.is_in(rows.column("kind"), value_set=pa.array(kinds)) if rows.num_rows else None
        tables[name] = rows.filter(mask) if mask is not None else rows
    return assign_ids(tables)
