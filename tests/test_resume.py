"""A rerun reuses only raw units of its own config and plan (unit level; no engine)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from m2l_ray.config import config_from_dict
from m2l_ray.errors import M2LError
from m2l_ray.io import Store
from m2l_ray.layout import CONFIG_KEY, unit_key
from m2l_ray.plan import PlannedConversation
from m2l_ray.resume import config_diff, reusable_units
from m2l_ray.schema import RAW_SCHEMA


def _cfg(**engine):
    return config_from_dict({"job": {"seed": 3}, "engine": {"sampling": {"temperature": 0.7}, **engine}})


def _item(key: str, unit: int) -> PlannedConversation:
    return PlannedConversation(key, key.split("-")[0], 0, "en", "open_ended", "q", "a", "s", ("X",), (), 1,
                               unit, 1)


UNITS = {0: [_item("a-0", 0), _item("b-0", 0)], 1: [_item("c-0", 1)]}


def _write_unit(store, unit: int, cfg, keys=None) -> None:
    keys = keys or [p.key for p in UNITS[unit]]
    rows = [{**{f.name: None for f in RAW_SCHEMA}, "key": k, "config_hash": cfg.config_hash()} for k in keys]
    store.write_parquet(unit_key(unit), pa.Table.from_pylist(rows, schema=RAW_SCHEMA))


def test_units_of_the_same_config_and_plan_are_reused(tmp_path):
    store, cfg = Store.open(str(tmp_path)), _cfg()
    assert reusable_units(store, cfg, UNITS) == set()
    assert store.get_json(CONFIG_KEY)["config_hash"] == cfg.config_hash()  # recorded at the start
    _write_unit(store, 0, cfg)
    assert reusable_units(store, cfg, UNITS) == {0}
    # a knob outside the hash (where and how fast) keeps them
    assert reusable_units(store, _cfg(stall_seconds=60, num_actors=2), UNITS) == {0}


def test_another_config_is_refused_with_the_keys_that_differ(tmp_path):
    store, cfg = Store.open(str(tmp_path)), _cfg()
    reusable_units(store, cfg, UNITS)
    _write_unit(store, 0, cfg)
    other = config_from_dict({"job": {"seed": 3}, "engine": {"sampling": {"temperature": 0.2}}})
    with pytest.raises(M2LError) as e:
        reusable_units(store, other, UNITS)
    msg = str(e.value)
    assert "engine.sampling.temperature (0.7 -> 0.2)" in msg
    assert "new output.uri" in msg and "--restart" in msg
    # --restart discards the unfinished units and records the new config
    assert reusable_units(store, other, UNITS, restart=True) == set()
    assert not store.exists(unit_key(0))
    assert store.get_json(CONFIG_KEY)["config_hash"] == other.config_hash()


def test_rows_of_another_config_are_caught_without_the_record(tmp_path):
    store, cfg = Store.open(str(tmp_path)), _cfg()
    _write_unit(store, 0, _cfg(max_num_seqs=7))  # an older output: no config.json
    with pytest.raises(M2LError, match="was made with config"):
        reusable_units(store, cfg, UNITS)


@pytest.mark.parametrize("unit, keys, expected", [
    (1, ["c-0", "z-0"], "holds other items than this plan's unit 1"),
    (5, None, "which this plan doesn't have"),
])
def test_units_of_another_plan_are_refused(tmp_path, unit, keys, expected):
    store, cfg = Store.open(str(tmp_path)), _cfg()
    if keys is None:
        rows = [{**{f.name: None for f in RAW_SCHEMA}, "key": "q-0", "config_hash": cfg.config_hash()}]
        store.write_parquet(unit_key(unit), pa.Table.from_pylist(rows, schema=RAW_SCHEMA))
    else:
        _write_unit(store, unit, cfg, keys)
    with pytest.raises(M2LError, match=expected):
        reusable_units(store, cfg, UNITS)


def test_config_diff_names_nested_keys_and_caps_the_list():
    old = {"engine": {"model": "a", "sampling": {"top_p": 0.9}}, "turns": {"max": 3}}
    new = {"engine": {"model": "b", "sampling": {"top_p": 0.9}}, "turns": {"max": 4}, "evol": {"per_seed": 2}}
    assert config_diff(old, new) == ['engine.model ("a" -> "b")', "evol.per_seed (null -> 2)",
                                     "turns.max (3 -> 4)"]
    many = config_diff({f"k{i}": i for i in range(12)}, {})
    assert len(many) == 9 and many[-1] == "... 4 more"
