"""The final shards through the writer registry (``output.format``), loaded back with the
real ``datasets`` package from the card the runner writes beside them.

No engine is needed to check the output path: the rows are the shipped sample's seeds
(seed_data and full_data), and seed_evol_data is left empty, the case a format that
can't say its columns without rows (JSONL) must handle.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet  # noqa: F401 - pa.parquet
import pytest

from m2l_ray import layout
from m2l_ray.card import dataset_card
from m2l_ray.config import load_config
from m2l_ray.io import Store
from m2l_ray.rows import seed_rows, split_configs
from m2l_ray.runner import Runner
from m2l_ray.schema import RAW_SCHEMA
from m2l_ray.seeds.reader import read_seeds


def _write(tmp_path, fmt: str, shard_rows: int = 5):
    out = tmp_path / fmt
    cfg = load_config("jobs/local.yaml", [f"output.uri={out}", f"output.format={fmt}",
                                          f"output.shard_rows={shard_rows}"])
    runner = Runner(cfg)
    ctx = runner.ctx
    seeds = read_seeds(cfg.seeds, ctx.registry, set(ctx.task_ids)).seeds[:12]
    job = {"model": "m", "engine": "vllm", "config_hash": cfg.config_hash(), "job_seed": cfg.seed}
    tables = split_configs(pa.Table.from_pylist(seed_rows(seeds, ctx.registry, job), schema=RAW_SCHEMA))
    store = Store.open(str(out), ctx.storage)
    shards = runner._write_configs(store, tables)
    summary = {"rows": {n: t.num_rows for n, t in tables.items()}, "per_language": {}}
    store.put_bytes(layout.CARD_KEY, dataset_card(cfg, summary, shards, versions={}).encode())
    return out, tables, shards


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_configs_load_by_name_in_either_format(tmp_path, fmt):
    import datasets

    out, tables, shards = _write(tmp_path, fmt)
    assert tables["seed_data"].num_rows == 12 and tables["seed_evol_data"].num_rows == 0
    suffix = {"parquet": ".parquet", "jsonl": ".jsonl"}[fmt]
    assert {s["key"] for s in shards if s["config"] == "seed_data"} == {
        f"seed_data/part-0000{i}{suffix}" for i in range(3)}  # 12 rows in shards of 5
    for name in ("seed_data", "full_data"):
        ds = datasets.load_dataset(str(out), name, split="train", cache_dir=str(tmp_path / "hf"))
        assert ds["key"] == tables[name].column("key").to_pylist()
        assert ds[0]["conversation"] == tables[name].column("conversation")[0].as_py()
    empty_shards = [s for s in shards if s["config"] == "seed_evol_data"]
    if fmt == "parquet":  # an empty Parquet shard keeps its columns (and no row group)
        empty = pa.parquet.read_table(out / empty_shards[0]["key"])
        assert empty.num_rows == 0 and empty.schema.names == RAW_SCHEMA.names
    else:  # JSONL can't say its columns without rows: no shard at all
        assert not empty_shards and not (out / "seed_evol_data").exists()
    # either way the card leaves the empty config out: datasets can't load a split of no rows
    card = (out / "README.md").read_text()
    assert "config_name: seed_evol_data" not in card and "config_name: seed_data" in card
    with pytest.raises(ValueError):
        datasets.load_dataset(str(out), "seed_evol_data", split="train", cache_dir=str(tmp_path / "hf"))


def test_a_rewrite_removes_the_shards_of_a_larger_earlier_attempt(tmp_path):
    out, _, _ = _write(tmp_path, "parquet", shard_rows=2)  # 6 shards of seed_data
    assert len(list((out / "seed_data").iterdir())) == 6
    _write(tmp_path, "parquet", shard_rows=5)
    assert sorted(p.name for p in (out / "seed_data").iterdir()) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
