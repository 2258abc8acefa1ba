"""Shard writers (``m2l_ray.io.writers``): the one interface every shard goes through.

Shows the extension point: the JSONL writer is a second registered writer, a folder
output of ``m2l dedup`` can be JSONL shards through it, and a writer added by a test
is used by name like the built-in ones.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import pyarrow as pa
import pytest

from m2l_ray.curation.io import read_table_local, write_output
from m2l_ray.io import Store, is_shard, writer_for
from m2l_ray.io import writers as writers_mod
from m2l_ray.io.writers import ShardWriter


def _table(n: int = 25) -> pa.Table:
    return pa.table({
        "id": list(range(n)),
        "text": [f"zeile {i} – ünïcödé" for i in range(n)],
        "tags": [[f"t{i}", "x"] for i in range(n)],
    })


def test_builtin_writers_by_name() -> None:
    assert writer_for("parquet").suffix == ".parquet"
    assert writer_for("jsonl").suffix == ".jsonl"
    assert writer_for("jsonl").shard_name(7) == "part-00007.jsonl"
    with pytest.raises(KeyError, match="unknown shard writer 'csv'.*parquet, jsonl"):
        writer_for("csv")


def test_jsonl_writer_through_a_store_is_deterministic(tmp_path) -> None:
    store = Store.open(str(tmp_path / "out"))
    table = _table()
    jsonl = writer_for("jsonl")
    meta = jsonl.write(store, "a/part-00000.jsonl", table)
    again = jsonl.write(store, "b/part-00000.jsonl", table)
    data = store.get_bytes("a/part-00000.jsonl")
    assert data == store.get_bytes("b/part-00000.jsonl")
    assert meta["sha256"] == again["sha256"] and meta["rows"] == 25 and meta["bytes"] == len(data)
    lines = data.decode("utf-8").splitlines()
    assert [json.loads(line) for line in lines] == table.to_pylist()
    assert "ünïcödé" in lines[0]  # UTF-8 as is, not \u-escaped
    # a .gz key is the same text, gzip-compressed without a time stamp: same bytes each time
    jsonl.write(store, "c/part-00000.jsonl.gz", table)
    gz = store.get_bytes("c/part-00000.jsonl.gz")
    assert gzip.decompress(gz) == data
    jsonl.write(store, "d/part-00000.jsonl.gz", table)
    assert store.get_bytes("d/part-00000.jsonl.gz") == gz
    assert store.read_table("c/part-00000.jsonl.gz", columns=["text"]).equals(table.select(["text"]))


def test_parquet_writer_is_what_write_parquet_writes(tmp_path) -> None:
    store = Store.open(str(tmp_path))
    table = _table()
    meta = store.write_parquet("x.parquet", table)
    assert writer_for("parquet").write(store, "y.parquet", table)["sha256"] == meta["sha256"]
    assert store.read_table("y.parquet").equals(table)


def test_folder_output_as_jsonl_shards(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-00009.parquet").write_bytes(b"stale")  # an earlier run's shard: removed
    (out / "notes.txt").write_text("kept")  # anything else: left alone
    table = _table(25)
    files = write_output(table, str(out), shard_rows=10, writer="jsonl")
    assert [f.rsplit("/", 1)[-1] for f in files] == [f"part-0000{i}.jsonl" for i in range(3)]
    assert sorted(p.name for p in out.iterdir()) == [
        "notes.txt", "part-00000.jsonl", "part-00001.jsonl", "part-00002.jsonl"]
    assert [len((out / f"part-0000{i}.jsonl").read_text().splitlines()) for i in range(3)] == [10, 10, 5]
    assert read_table_local(str(out)).equals(table)


class _TsvWriter(ShardWriter):
    """A third format, as a user would add one: a subclass and ``register_writer``."""

    name = "tsv"
    suffix = ".tsv"

    def write_to(self, sink: Any, tables: Any) -> None:
        for t in tables:
            for row in t.to_pylist():
                sink.write(("\t".join(str(v) for v in row.values()) + "\n").encode())


def test_a_new_writer_is_one_registration(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writers_mod, "_WRITERS", dict(writers_mod._WRITERS))
    writers_mod.register_writer(_TsvWriter())
    assert is_shard("part-00001.tsv") and not is_shard("part-1.tsv")
    files = write_output(_table(3).select(["id", "text"]), str(tmp_path / "out"), writer="tsv")
    assert [f.rsplit("/", 1)[-1] for f in files] == ["part-00000.tsv"]
    assert (tmp_path / "out" / "part-00000.tsv").read_text().splitlines()[2] == "2\tzeile 2 – ünïcödé"


def test_single_file_outputs_stream_through_the_format_writer(tmp_path) -> None:
    table = _table(25)
    for name in ("one.parquet", "one.jsonl", "one.jsonl.gz"):
        (path,) = write_output(table, str(tmp_path / name), shard_rows=10)
        assert path == str(tmp_path / name)
        assert read_table_local(path).equals(table), name
    first = (tmp_path / "one.jsonl.gz").read_bytes()
    write_output(table, str(tmp_path / "one.jsonl.gz"))
    assert (tmp_path / "one.jsonl.gz").read_bytes() == first  # deterministic
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
