"""The curation stage on real Ray: reasons, stats, annotate-only, determinism, CLI."""

from __future__ import annotations

import argparse
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from m2l_ray.curation.config import CurationConfig
from m2l_ray.errors import ConfigError
from m2l_ray.schema import RAW_SCHEMA

EN_Q = "How does photosynthesis work in green plants, and why does it matter?"
EN_A = ("Photosynthesis is the process by which green plants use sunlight, water and carbon "
        "dioxide to make glucose and oxygen. It happens mostly in the leaves, inside the "
        "chloroplasts, and it is the basis of almost every food chain on Earth, because the "
        "sugar it stores feeds the plant and every animal that eats it.")
EN_Q2 = "Can you give me one simple experiment that shows it happening at home?"
EN_A2 = ("Put a leafy water plant in a glass of water in bright sunlight and watch small "
         "bubbles of oxygen form on the leaves after an hour or so; in the dark they stop.")


def raw_row(id_, lang, turns, status="ok", task="open_qa"):
    conv = [{"role": r, "content": c} for r, c in turns]
    row = {f.name: None for f in RAW_SCHEMA}
    row.update({"key": id_, "kind": "multiturn" if len(conv) > 2 else "evolved", "language_code": lang, "language": lang, "task": task,
                "conversation": conv, "status": status, "no_of_turns": len(conv) // 2,
                "failures": [], "work_unit": 0})
    return row


def _variant(text: str, i: int) -> str:
    return text.replace("plants", f"plants number {i}")


def corpus() -> list[dict]:
    rows = [
        raw_row("en-good", "en", [("user", EN_Q), ("assistant", EN_A), ("user", EN_Q2),
                                  ("assistant", EN_A2)]),
        raw_row("en-dup", "en", [("user", EN_Q + " "), ("assistant", EN_A.upper()),
                                 ("user", EN_Q2), ("assistant", EN_A2)]),
        raw_row("en-failed", "en", [("user", EN_Q)], status="failed"),
        raw_row("en-refusal", "en", [("user", "Write a limerick about tax law and cats."),
                                     ("assistant", "I'm sorry, but I can't help with that.")]),
        raw_row("en-template", "en", [("user", "#Rewritten Prompt#: " + EN_Q2),
                                      ("assistant", EN_A2)]),
        raw_row("en-empty", "en", [("user", EN_Q2), ("assistant", "  ")]),
        raw_row("fr-good", "fr", [
            ("user", "Peux-tu m'expliquer la différence entre un virus et une bactérie ?"),
            ("assistant", "Bien sûr. Une bactérie est un organisme vivant composé d'une seule "
                          "cellule, capable de se reproduire seule. Un virus est beaucoup plus "
                          "petit et ne peut se multiplier qu'à l'intérieur d'une cellule hôte.")]),
        raw_row("fr-english", "fr", [
            ("user", "Peux-tu m'expliquer la différence entre un virus et une bactérie ?"),
            ("assistant", "Sure. A bacterium is a living single-celled organism that can "
                          "reproduce on its own, while a virus needs a host cell to multiply.")]),
        raw_row("zh-good", "zh", [
            ("user", "请解释一下为什么天空是蓝色的。"),
            ("assistant", "天空呈现蓝色是因为太阳光进入大气层后，"
                          "波长较短的蓝光比其他颜色的光更容易被"
                          "空气分子散射，这种现象叫做瑞利散射，所以我们看到的天空是蓝色的。")]),
        raw_row("ha-good", "ha", [
            ("user", "Don Allah ka gaya mini yadda ake dafa shinkafa da miya mai dadi."),
            ("assistant", "Da farko ka wanke shinkafa sosai, sannan ka dafa ta da ruwa da gishiri "
                          "har sai ta yi laushi. Daga nan ka shirya miya da tumatir da albasa.")]),
        raw_row("ha-cyrillic", "ha", [
            ("user", "Don Allah ka gaya mini yadda ake dafa shinkafa da miya mai dadi."),
            ("assistant", "Сначала хорошо промойте рис, затем сварите его в подсоленной воде "
                          "до мягкости, а потом приготовьте соус из помидоров и лука.")]),
    ]
    for i in range(12):  # distinct filler so the data spans several blocks
        rows.append(raw_row(f"en-fill-{i:02d}", "en", [
            ("user", f"Question {i}: " + _variant(EN_Q, i) + f" Consider case {i * 7}."),
            ("assistant", " ".join(f"word{i}x{j}" for j in range(60)) + " " + EN_A2)]))
    return rows


def _ds(rows):
    import ray

    return ray.data.from_arrow(pa.Table.from_pylist(rows, schema=RAW_SCHEMA))


def _collect(ds) -> list[dict]:
    return [r for b in ds.iter_batches(batch_size=None, batch_format="pyarrow")
            for r in b.to_pylist()]


CFG = {"block_rows": 4, "lid": {"unsupported_policy": "script_only"},
       "dedup": {"num_partitions": 2}}


def test_curate_reasons_stats_and_determinism(curation_ray, registry):
    from m2l_ray.curation.stage import curate

    cfg = CurationConfig.from_dict(CFG)
    res = curate(_ds(corpus()), cfg, registry)
    kept = {r["key"]: r for r in _collect(res.kept)}
    dropped = {r["key"]: r for r in _collect(res.dropped)}
    assert set(kept) | set(dropped) == {r["key"] for r in corpus()}
    want = {
        "en-failed": ("generation_failed", None),
        "en-refusal": ("refusal", 1),
        "en-template": ("template_leftover", 0),
        "en-empty": ("empty_turn", 1),
        "fr-english": ("lid_mismatch", 1),
        "ha-cyrillic": ("script_mismatch", 1),
    }
    for id_, (reason, turn) in want.items():
        assert (dropped[id_]["drop_reason"], dropped[id_]["drop_turn"]) == (reason, turn), id_
    # one of the planted near-duplicate pair is dropped, the other kept
    pair = {"en-good", "en-dup"}
    assert len(pair & set(kept)) == 1 and len(pair & set(dropped)) == 1
    loser = (pair & set(dropped)).pop()
    assert dropped[loser]["drop_reason"] == "near_duplicate"
    assert dropped[loser]["dedup_cluster"] == kept[(pair & set(kept)).pop()]["dedup_cluster"]
    for id_ in ("fr-good", "zh-good", "ha-good"):
        assert id_ in kept
    assert "drop_reason" not in next(iter(kept.values()))
    zh = kept["zh-good"]
    assert zh["lid_labels"] == ["zh", "zh"] and zh["lid_scores"][1] > 0.5
    assert kept["ha-good"]["lid_labels"] == [None, None]  # script_only: no fastText label

    st = res.stats()
    assert st["rows"] == len(corpus()) and st["kept"] == len(kept)
    assert st["drop_reasons"]["near_duplicate"] == 1
    assert st["drop_reasons"]["generation_failed"] == 1
    en = st["per_language"]["en"]
    assert en["dropped"]["refusal"] == 1 and en["generated_ok"] == en["rows"] - 1
    assert en["pass_rate"]["refusal"] == pytest.approx(1 - 1 / en["generated_ok"], abs=1e-4)
    assert st["per_language"]["fr"]["pass_rate"]["lid_mismatch"] == 0.5
    assert st["per_language"]["ha"]["pass_rate"]["script_mismatch"] == 0.5
    assert st["lid"]["modes"]["ha"] == "script_only"
    assert any("ha (Hausa)" in w for w in st["warnings"])
    json.dumps(st)  # machine-readable

    # same input, cut into different blocks: the same rows are kept
    cfg2 = CurationConfig.from_dict({**CFG, "block_rows": 7, "dedup": {"num_partitions": 3}})
    again = curate(_ds(list(reversed(corpus()))), cfg2, registry)
    assert {r["key"] for r in _collect(again.kept)} == set(kept)


def test_annotate_only_keeps_everything_but_failed(curation_ray, registry):
    from m2l_ray.curation.stage import curate

    cfg = CurationConfig.from_dict({**CFG, "annotate_only": True})
    res = curate(_ds(corpus()), cfg, registry)
    kept = {r["key"]: r for r in _collect(res.kept)}
    assert set(kept) == {r["key"] for r in corpus()} - {"en-failed"}
    assert "refusal@1" in kept["en-refusal"]["curation_flags"]
    assert "lid_mismatch@1" in kept["fr-english"]["curation_flags"]
    dup_flags = [kept[i]["curation_flags"] for i in ("en-good", "en-dup")]
    assert sum("near_duplicate" in f for f in dup_flags) == 1
    assert kept["en-good"]["dedup_cluster"] == kept["en-dup"]["dedup_cluster"]
    st = res.stats()
    assert st["drop_reasons"] == {"generation_failed": 1}
    assert st["per_language"]["en"]["flagged"]["near_duplicate"] == 1


def test_language_without_lid_label_and_policy_is_refused(curation_ray, registry):
    from m2l_ray.curation.stage import curate

    with pytest.raises(ConfigError) as e:
        curate(_ds(corpus()), CurationConfig.from_dict({"block_rows": 4}), registry)
    assert "ha (Hausa)" in str(e.value)


def _parser():
    from m2l_ray.curation.cli import register

    p = argparse.ArgumentParser(prog="m2l")
    register(p.add_subparsers(dest="command", required=True))
    return p


def test_cli_dedup_and_langid(curation_ray, tmp_path, capsys):
    docs = [{"doc": f"d{i}", "text": " ".join(f"tok{i}w{j}" for j in range(40))}
            for i in range(20)]
    docs.append({"doc": "d3-copy", "text": docs[3]["text"].upper() + " extra"})
    docs.append({"doc": "d5-copy", "text": "  " + docs[5]["text"]})
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(d) for d in docs) + "\n")

    out = tmp_path / "dedup.parquet"
    args = _parser().parse_args(["dedup", str(src), str(out), "--text-field", "text",
                                 "--id-field", "doc", "--verify", "none",
                                 "--stats-json", str(tmp_path / "s.json")])
    assert args.func(args) == 0
    table = pq.read_table(out)
    assert table.num_rows == 20
    assert "dedup_cluster" not in table.column_names
    printed = capsys.readouterr().out
    assert "duplicates" in printed and "rows_out" in printed
    assert json.loads((tmp_path / "s.json").read_text())["duplicates"] == 2

    ann = tmp_path / "ann.jsonl"
    args = _parser().parse_args(["dedup", str(src), str(ann), "--text-field", "text",
                                 "--annotate", "--threshold", "0.7", "--ngram", "3",
                                 "--verify", "signature"])
    assert args.func(args) == 0
    rows = {r["doc"]: r for r in map(json.loads, ann.read_text().splitlines())}
    assert len(rows) == 22
    assert rows["d3"]["dedup_cluster"] == rows["d3-copy"]["dedup_cluster"]
    assert rows["d5"]["dedup_cluster"] == rows["d5-copy"]["dedup_cluster"]
    assert rows["d3"]["dedup_cluster"] != rows["d5"]["dedup_cluster"]
    assert sum(r["dedup_duplicate"] for r in rows.values()) == 2

    texts = pa.table({"text": ["Bonjour, comment allez-vous aujourd'hui ?",
                               "Guten Morgen, wie geht es dir heute?", "", None],
                      "n": [1, 2, 3, 4]})
    pq.write_table(texts, tmp_path / "t.parquet")
    out = tmp_path / "lid.jsonl"
    args = _parser().parse_args(["langid", str(tmp_path / "t.parquet"), str(out),
                                 "--text-field", "text"])
    assert args.func(args) == 0
    rows = sorted(map(json.loads, out.read_text().splitlines()), key=lambda r: r["n"])
    assert [r["lid_label"] for r in rows] == ["fr", "de", None, None]
    assert rows[0]["lid_score"] > 0.5
    assert "top_labels" in capsys.readouterr().out


def test_cli_errors_name_the_flag(curation_ray, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": "a b c"}) + "\n")
    args = _parser().parse_args(["dedup", str(src), str(tmp_path / "o.parquet"),
                                 "--text-field", "body"])
    with pytest.raises(ConfigError) as e:
        args.func(args)
    assert e.value.key == "--text-field"
    args = _parser().parse_args(["dedup", str(src), str(tmp_path / "o.parquet"),
                                 "--text-field", "text", "--threshold", "2"])
    with pytest.raises(ConfigError) as e:
        args.func(args)
    assert e.value.key == "--threshold"
