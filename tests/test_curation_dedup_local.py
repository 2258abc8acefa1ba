"""The single-node dedup path (curation/dedup_local.py) against the Ray Data path.

Both paths must give the same clusters and keep the same rows. The corpora plant
near-duplicates in several scripts: word shingles for Latin and Cyrillic, character
shingles for Chinese, Japanese and Thai (segmentation "auto" decides by script),
among negatives that share a template or half of their text. Each path is checked
against exact Jaccard computed in pure Python over the same shingles, and the two
paths against each other row by row (cluster id and duplicate flag). Also: the
worker pool (threads or processes) changes nothing, ineligible rows, the other verification modes, the
command's choice of path and its row-sized output shards.
"""

from __future__ import annotations

import argparse
import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_curation_dedup import (
    NGRAM,
    _shingle_set,
    build_corpus,
    check_against_truth,
    exact_roots,
    truth_groups,
)

from m2l_ray.curation import dedup_local, kernel
from m2l_ray.curation.config import DedupConfig
from m2l_ray.curation.io import shards
from m2l_ray.languages import LanguageRegistry

WORD_N, CHAR_N = NGRAM, 5  # the shingles of the exact-Jaccard truth (test_curation_dedup._shingle_set)
CYRILLIC = "абвгдежзийклмнопрстуфхцчшщыэюя"
THAI = "".join(chr(c) for c in range(0x0E01, 0x0E2F))  # consonants
HIRAGANA = "".join(chr(c) for c in range(0x3041, 0x3097))


def _words(rng: random.Random, alphabet: str, n: int) -> list[str]:
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(3, 8))) for _ in range(n)]


def _han(rng: random.Random, n: int) -> str:
    return "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(n))


def multiscript_corpus(seed: int = 3) -> list[dict]:
    """Planted near-duplicates and negatives in five scripts; ``char`` says how the
    truth shingles a row (by construction, not by the code under test)."""
    rng = random.Random(seed)
    rows: list[dict] = []

    def add(id_: str, text: str, char: bool) -> None:
        rows.append({"id": id_, "text": text, "char": char})

    for script, alphabet in (("la", "abcdefghijklmnoprstuvwz"), ("ru", CYRILLIC)):
        vocab = _words(rng, alphabet, 3000)
        for i in range(25):
            words = [rng.choice(vocab) for _ in range(60)]
            base = " ".join(words)
            add(f"{script}{i}", base, False)
            kind = i % 4
            if kind == 0:  # one word replaced
                w = list(words)
                w[30] = rng.choice(vocab)
                add(f"{script}{i}-edit", " ".join(w), False)
            elif kind == 1:  # case, punctuation and line breaks
                add(f"{script}{i}-case", ", ".join(base.upper().split(" ")[:30]) + "\n\n"
                    + " ".join(words[30:]).upper() + " !", False)
            elif kind == 2:  # half of it shared: a negative at 0.8
                add(f"{script}{i}-half", " ".join(words[:30] + [rng.choice(vocab)
                                                              for _ in range(30)]), False)
        template = [rng.choice(vocab) for _ in range(12)]
        for i in range(6):  # shared template, different content
            add(f"{script}-t{i}", " ".join(template + [rng.choice(vocab) for _ in range(20)]),
                False)

    def char_family(script: str, make) -> None:
        for i in range(20):
            base = make(240)
            add(f"{script}{i}", base, True)
            kind = i % 4
            if kind == 0:  # two characters changed
                s = list(base)
                s[100], s[180] = make(1), make(1)
                add(f"{script}{i}-edit", "".join(s), True)
            elif kind == 1:  # punctuation and spaces inserted
                add(f"{script}{i}-punct", "，".join(base[j:j + 40] for j in range(0, 240, 40))
                    + "。", True)
            elif kind == 2:  # the first half shared
                add(f"{script}{i}-half", base[:120] + make(120), True)

    char_family("zh", lambda n: _han(rng, n))
    char_family("th", lambda n: "".join(rng.choice(THAI) for _ in range(n)))
    char_family("ja", lambda n: "".join(rng.choice(HIRAGANA) if rng.random() < 0.6
                                        else _han(rng, 1) for _ in range(n)))
    add("la0", rows[0]["text"], False)  # an identical row (same id and text)
    return rows


def multiscript_truth(rows: list[dict], threshold: float = 0.8) -> list[list[str]]:
    """Exact-Jaccard clusters (union-find over all pairs) as sorted id lists."""
    roots = exact_roots([_shingle_set(r["text"], r["char"]) for r in rows], threshold)
    groups: dict[int, list[str]] = {}
    for i, root in enumerate(roots):
        groups.setdefault(root, []).append(rows[i]["id"])
    return sorted(sorted(g) for g in groups.values())


def _table(rows: list[dict], order: list[int] | None = None) -> pa.Table:
    order = order if order is not None else list(range(len(rows)))
    return pa.Table.from_pylist([{k: v for k, v in rows[i].items() if k != "char"}
                                 for i in order])


def _local(table: pa.Table, cfg: DedupConfig, **kw) -> tuple[list[dict], dict]:
    res = dedup_local.dedup_table(table, cfg, **kw)
    return res.annotated().to_pylist(), res.stats


def _ray(table: pa.Table, cfg: DedupConfig, blocks: int, **kw) -> tuple[list[dict], dict]:
    import ray

    from m2l_ray.curation.dedup import dedup

    res = dedup(ray.data.from_arrow(table).repartition(blocks), cfg, **kw)
    out = [r for b in res.ds.iter_batches(batch_size=None, batch_format="pyarrow")
           for r in b.to_pylist()]
    return out, res.stats


def _by_content(out: list[dict]) -> dict[tuple, list[tuple]]:
    """(id, text) -> sorted (cluster, duplicate) of its rows: identical rows are
    interchangeable, so only how many of them survive is compared."""
    got: dict[tuple, list[tuple]] = {}
    for r in out:
        got.setdefault((r["id"], r["text"]), []).append((r["dedup_cluster"],
                                                         r["dedup_duplicate"]))
    return {k: sorted(v) for k, v in got.items()}


def _groups(out: list[dict]) -> list[list[str]]:
    g: dict[str, list[str]] = {}
    for r in out:
        g.setdefault(r["dedup_cluster"], []).append(r["id"])
    return sorted(sorted(x) for x in g.values())


def _assert_same(local: tuple[list[dict], dict], ray_: tuple[list[dict], dict]) -> None:
    lo, ls = local
    ro, rs = ray_
    assert _by_content(lo) == _by_content(ro)
    for key in ("rows", "duplicates", "clusters", "exact_duplicates", "candidate_edges",
                "verified_edges", "num_perm", "bands"):
        assert ls[key] == rs[key], key


def _one_survivor_per_cluster(out: list[dict]) -> None:
    by: dict[str, list[dict]] = {}
    for r in out:
        by.setdefault(r["dedup_cluster"], []).append(r)
    assert all(sum(not r["dedup_duplicate"] for r in g) == 1 for g in by.values())


def test_multiscript_corpus_plants_what_it_says():
    rows = multiscript_corpus()
    groups = multiscript_truth(rows)
    multi = [g for g in groups if len(g) > 1]
    # planted pairs in every script, and the half-shared / template rows stay apart
    for script in ("la", "ru", "zh", "th", "ja"):
        assert sum(g[0].startswith(script) for g in multi) >= 5, script
    assert not any(any("-half" in x or "-t" in x for x in g) for g in multi)


def test_local_equals_ray_on_scripts_with_word_and_char_shingles(curation_ray):
    rows = multiscript_corpus()
    cfg = DedupConfig(field="text", key_field=None, ngram=WORD_N, char_ngram=CHAR_N,
                      threshold=0.8, segmentation="auto")
    order = list(range(len(rows)))
    random.Random(5).shuffle(order)
    local = _local(_table(rows), cfg, workers=1)
    local_shuffled = _local(_table(rows, order), cfg, workers=1)
    ray_ = _ray(_table(rows, order), cfg, 5)
    truth = multiscript_truth(rows)
    for out, _ in (local, local_shuffled, ray_):
        assert len(out) == len(rows)
        assert _groups(out) == truth
        _one_survivor_per_cluster(out)
    assert local[1]["exact_duplicates"] == 1
    assert local[1]["duplicates"] == sum(len(g) - 1 for g in truth)
    _assert_same(local, ray_)
    _assert_same(local, local_shuffled)


def test_local_equals_ray_on_the_planted_corpus_with_registry_segmentation(curation_ray):
    rows = build_corpus()  # tests/test_curation_dedup.py: Latin + a Chinese pair
    cfg = DedupConfig(field="text", key_field=None, ngram=3, threshold=0.8,
                      segmentation="registry")
    kw = {"registry": LanguageRegistry.load(), "language_field": "lang"}
    local = _local(pa.Table.from_pylist(rows), cfg, **kw)
    ray_ = _ray(pa.Table.from_pylist(rows), cfg, 4, **kw)
    check_against_truth(local[0], rows)
    _assert_same(local, ray_)
    assert local[1]["duplicates"] == sum(len(g) - 1 for g in truth_groups(rows))


@pytest.mark.parametrize("compiled", [True, False], ids=["threads", "process-pool"])
def test_the_worker_pool_changes_nothing(monkeypatch, compiled):
    """Threads share the work when the compiled kernel hashes (it releases the GIL),
    a forked process pool when numpy does: neither changes a cluster."""
    if compiled and not kernel.available():
        pytest.skip("numba is not installed")
    monkeypatch.setattr(kernel, "available", lambda: compiled)
    rows = multiscript_corpus()
    cfg = DedupConfig(field="text", key_field="id", ngram=WORD_N, threshold=0.8,
                      segmentation="auto")
    table = _table(rows)
    inline = _local(table, cfg, workers=1)
    # tiny tasks, and a pool even for this small table
    monkeypatch.setattr(dedup_local, "TASK_ROWS", 37)
    monkeypatch.setattr(dedup_local, "POOL_MIN_ROWS", 0)
    pooled = _local(table, cfg, workers=2)
    assert inline[1]["workers"] == 1 and pooled[1]["workers"] == 2
    assert inline[1]["pool"] == "inline"
    assert pooled[1]["pool"] == ("threads" if compiled else "processes")
    assert inline[0] == pooled[0]
    assert _groups(pooled[0]) == multiscript_truth(rows)


@pytest.mark.parametrize("verify", ["signature", "none"])
def test_other_verification_modes_agree(curation_ray, verify):
    rows = multiscript_corpus()
    cfg = DedupConfig(field="text", key_field="id", ngram=WORD_N, threshold=0.8,
                      segmentation="auto", verify=verify)
    local = _local(_table(rows), cfg, workers=1)
    _assert_same(local, _ray(_table(rows), cfg, 3))
    if verify == "none":  # unverified candidates can only add pairs
        assert local[1]["verified_edges"] == local[1]["candidate_edges"]


def test_ineligible_rows_take_no_part(curation_ray):
    rows = multiscript_corpus()
    table = _table(rows)
    ok = [not r["id"].startswith("ru") for r in rows]
    table = table.append_column("ok", pa.array(ok))
    cfg = DedupConfig(field="text", key_field="id", ngram=WORD_N, threshold=0.8,
                      segmentation="auto")
    local = _local(table, cfg, eligible_field="ok", workers=1)
    ray_ = _ray(table, cfg, 3, eligible_field="ok")
    assert _by_content(local[0]) == _by_content(ray_[0])
    for r in local[0]:
        if r["id"].startswith("ru"):
            assert r["dedup_cluster"] is None and not r["dedup_duplicate"]
    assert any(r["dedup_duplicate"] for r in local[0] if r["id"].startswith("la"))


def test_shards_cut_by_rows_in_order():
    t = pa.table({"x": np.arange(23)})
    parts = list(shards([t.slice(0, 5), t.slice(5, 11), t.slice(16)], 7))
    assert [p.num_rows for p in parts] == [7, 7, 7, 2]
    assert pa.concat_tables(parts).column("x").to_pylist() == list(range(23))
    empty = list(shards([], 7, t.schema))
    assert len(empty) == 1 and empty[0].num_rows == 0 and empty[0].schema == t.schema


def _parser() -> argparse.ArgumentParser:
    from m2l_ray.curation.cli import register

    p = argparse.ArgumentParser(prog="m2l")
    register(p.add_subparsers(dest="command", required=True))
    return p


def _cli(args: list[str], capsys) -> tuple[dict, str]:
    ns = _parser().parse_args(args)
    assert ns.func(ns) == 0
    printed = capsys.readouterr().out
    return ns, printed


def test_command_paths_agree_and_write_row_shards(curation_ray, tmp_path, capsys):
    rows = multiscript_corpus()
    src = tmp_path / "in.parquet"
    pq.write_table(_table(rows), src, row_group_size=50)
    common = ["--text-field", "text", "--ngram", str(WORD_N), "--annotate",
              "--shard-rows", "40"]
    outs = {}
    for name, extra in (("local", []), ("budget", ["--local-memory-gb", "0"]),
                        ("forced", ["--distributed"])):
        out = tmp_path / name
        out.mkdir()
        (out / "part-00099.parquet").write_bytes(b"stale")  # removed by the write
        (out / "notes.txt").write_text("kept")
        _, printed = _cli(["dedup", str(src), str(out), *common, *extra], capsys)
        first = printed.splitlines()[0]
        want = "local" if name == "local" else "distributed"
        assert first.startswith(f"m2l dedup: {want} path")
        if name == "budget":
            assert "more than 0.0 GB" in first
        if name == "forced":
            assert "--distributed" in first
        files = sorted(p.name for p in out.iterdir())
        n_files = -(-len(rows) // 40)
        assert files == ["notes.txt"] + [f"part-{i:05d}.parquet" for i in range(n_files)]
        sizes = [pq.read_metadata(out / f).num_rows for f in files[1:]]
        assert sizes == [40] * (n_files - 1) + [len(rows) - 40 * (n_files - 1)]
        outs[name] = pa.concat_tables([pq.read_table(out / f) for f in files[1:]]).to_pylist()
    assert _by_content(outs["local"]) == _by_content(outs["budget"]) == \
        _by_content(outs["forced"])
    assert _groups(outs["local"]) == multiscript_truth(rows)


def test_command_single_file_outputs_stay_one_file(tmp_path, capsys):
    rows = multiscript_corpus()
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "char"},
                                      ensure_ascii=False) + "\n" for r in rows))
    for name in ("out.parquet", "out.jsonl"):
        _, printed = _cli(["dedup", str(src), str(tmp_path / name), "--text-field", "text",
                           "--ngram", str(WORD_N), "--shard-rows", "10",
                           "--stats-json", str(tmp_path / "s.json")], capsys)
        assert printed.startswith("m2l dedup: local path")
        stats = json.loads((tmp_path / "s.json").read_text())
        assert stats["files"] == 1 and stats["path"] == "local"
        if name.endswith(".parquet"):
            kept = pq.read_table(tmp_path / name).to_pylist()
        else:
            kept = [json.loads(x) for x in (tmp_path / name).read_text().splitlines()]
        truth = multiscript_truth(rows)
        assert len(kept) == len(truth) == stats["rows_out"]
        assert "dedup_cluster" not in kept[0]
        # one survivor per true cluster
        ids = [r["id"] for r in kept]
        assert sorted(sum(x in ids for x in set(g)) for g in truth) == [1] * len(truth)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl",
                                                         "out.parquet", "s.json"]
