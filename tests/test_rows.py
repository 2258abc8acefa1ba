"""Raw attempts -> the three output configs: row kinds, a failed later turn, ids, public schema."""

from __future__ import annotations

import asyncio

import pyarrow as pa
from scripted_engine import ScriptedEngine, too_long
from test_synthesis import planned, spanish, synth

from m2l_ray.languages import LanguageRegistry
from m2l_ray.rows import generated_rows, seed_rows, split_configs
from m2l_ray.schema import CONFIGS, PUBLIC_COLUMNS, RAW_SCHEMA
from m2l_ray.seeds.records import Seed
from m2l_ray.taxonomy import Taxonomy

REG, TAX = LanguageRegistry.load(), Taxonomy.load()


def _attempt(turns: int, fail_step: str | None = None, slot: int = 0) -> dict:
    def reply(request_id: str, messages):
        if fail_step and request_id.endswith(fail_step):
            return too_long(request_id)
        return spanish(request_id, messages)

    p = planned(TAX, turns=turns)
    p = p.__class__(**{**p.__dict__, "key": f"{p.seed_id}-{slot}", "evol_slot": slot})
    return asyncio.run(synth(ScriptedEngine(reply), REG, TAX).run(p))


def test_a_failed_later_turn_keeps_the_evolved_pair():
    row = _attempt(turns=3, fail_step="user.3")
    assert row["kind"] == "multiturn" and row["status"] == "failed" and row["pair_status"] == "ok"
    assert row["multiturn_evol_types"] == [e.name for e in TAX.multiturn_evols[:2]]
    assert row["multiturn_evol_type"] == row["multiturn_evol_types"][0]
    pair, multi = generated_rows(pa.Table.from_pylist([row], schema=RAW_SCHEMA))
    assert (pair["kind"], pair["status"], pair["no_of_turns"]) == ("evolved", "ok", 1)
    assert pair["conversation"] == row["conversation"][:2] and pair["failures"] == []
    assert pair["key"] == row["key"] and multi["key"] == row["key"] + "-mt"
    assert multi["status"] == "failed" and [f["step"] for f in multi["failures"]] == ["user.3"]
    assert pair["completion_tokens"] is None and multi["completion_tokens"] == row["completion_tokens"]


def test_single_turn_attempt_is_one_evolved_row():
    row = _attempt(turns=1)
    assert row["kind"] == "evolved" and row["status"] == row["pair_status"] == "ok"
    assert row["no_of_turns"] == 1 and row["multiturn_evol_types"] == []
    assert generated_rows(pa.Table.from_pylist([row], schema=RAW_SCHEMA)) == [row]


def test_configs_hold_their_kinds_with_shared_public_ids():
    seed = Seed("abc123", "es", "question_answering", "¿Cuál es la capital de Francia?", "París.",
                "test", "f.jsonl", 1)
    no_answer = Seed("zzz999", "es", "question_answering", "¿Y de Italia?", "", "test", "f.jsonl", 2)
    seeds = seed_rows([seed, no_answer], REG, {"model": "m", "engine": "e", "config_hash": "h",
                                               "job_seed": 1})
    assert [r["key"] for r in seeds] == ["abc123"]  # a pair needs a response
    attempts = [_attempt(turns=2, slot=1), _attempt(turns=1, slot=0)]
    gen = generated_rows(pa.Table.from_pylist(attempts, schema=RAW_SCHEMA))
    rows = pa.Table.from_pylist(seeds + gen, schema=RAW_SCHEMA)
    tables = split_configs(rows)
    assert set(tables) == set(CONFIGS)
    kinds = {name: set(t.column("kind").to_pylist()) for name, t in tables.items()}
    assert kinds == {"seed_data": {"seed"}, "seed_evol_data": {"evolved"},
                     "full_data": {"seed", "evolved", "multiturn"}}
    full = tables["full_data"]
    assert full.column("id").to_pylist() == list(range(full.num_rows))  # final order
    assert full.column("key").to_pylist() == sorted(full.column("key").to_pylist())
    ids = dict(zip(full.column("key").to_pylist(), full.column("id").to_pylist(), strict=True))
    for t in tables.values():  # a row keeps its id in every config it is in
        assert all(ids[k] == i for k, i in zip(t.column("key").to_pylist(), t.column("id").to_pylist(),
                                               strict=True))
    # the public columns have the public types
    public = pa.schema(PUBLIC_COLUMNS)
    assert full.select(public.names).schema == public
    assert pa.types.is_int32(full.schema.field("id").type)
