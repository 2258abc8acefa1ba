"""Seed readers, normalisation, quarantine, and the shipped sample."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from m2l_ray.config import SeedsConfig, SeedSource
from m2l_ray.languages import LanguageRegistry
from m2l_ray.scripts import dominant_script
from m2l_ray.seeds.reader import read_seeds
from m2l_ray.seeds.records import seed_id
from m2l_ray.taxonomy import Taxonomy

REG = LanguageRegistry.load()
TASKS = set(Taxonomy.load().tasks)


def read(paths, **kw):
    srcs = tuple(SeedSource(p, **kw) if isinstance(p, str) else p for p in paths)
    return read_seeds(SeedsConfig(sources=srcs, max_chars=500), REG, TASKS)


def test_shipped_sample_is_wide_and_clean():
    r = read_seeds(SeedsConfig(), REG, TASKS)
    assert r.quarantine == []
    langs = {s.language_code for s in r.seeds}
    tasks = {s.task for s in r.seeds}
    assert len(langs) >= 20 and len(tasks) >= 8
    levels = {REG.get(c).resource for c in langs}
    assert levels == {"high", "mid", "low"}
    scripts = {REG.get(c).script for c in langs}
    assert {"Latn", "Cyrl", "Arab", "Deva", "Hans", "Ethi"} <= scripts
    # every language x task group is complete and every seed has a reference answer
    per_lang = Counter(s.language_code for s in r.seeds)
    assert min(per_lang.values()) >= 8
    assert all(s.reference_answer for s in r.seeds)
    # written natively: the instruction is in the language's script
    for s in (s for s in r.seeds if s.task != "translation"):  # translation quotes other languages
        if REG.get(s.language_code).script in ("Deva", "Arab", "Ethi", "Cyrl", "Thai", "Beng", "Taml", "Khmr", "Grek"):
            assert dominant_script(s.instruction) == REG.get(s.language_code).script, s


def test_planted_bad_rows_are_quarantined_with_file_row_field(tmp_path):
    p = tmp_path / "seeds.jsonl"
    good = {"language": "sw", "task": "question_answering", "instruction": "Mji mkuu wa Kenya ni upi?", "reference_answer": "Nairobi."}
    lines = [
        json.dumps(good, ensure_ascii=False).encode(),
        b'{"language": "en", "task": "question_answering", "instruction": ',  # broken JSON
        b'{"language": "en", "task": "question_answering", "instruction": "caf\xe9"}',  # latin-1 bytes
        json.dumps({**good, "instruction": "   "}).encode(),
        json.dumps({**good, "language": "qq"}).encode(),
        json.dumps({**good, "instruction": "x" * 600}).encode(),
        json.dumps({"language": "en", "task": "question_answering"}).encode(),
        json.dumps(good, ensure_ascii=False).encode(),  # duplicate
        json.dumps({**good, "task": "juggling"}).encode(),
        b"[1, 2]",
    ]
    p.write_bytes(b"\n".join(lines) + b"\n")
    r = read([str(p)])
    assert len(r.seeds) == 1 and r.rows_read == 10
    got = {(q.row, q.field, q.reason) for q in r.quarantine}
    assert got == {
        (2, "(line)", "invalid_json"),
        (3, "(line)", "undecodable"),
        (4, "instruction", "empty_text"),
        (5, "language", "unknown_language"),
        (6, "instruction", "too_long"),
        (7, "instruction", "missing_field"),
        (8, "instruction", "duplicate_seed"),
        (9, "task", "unknown_task"),
        (10, "(line)", "not_an_object"),
    }
    assert all(q.file == str(p) for q in r.quarantine)
    lines_out = r.quarantine_jsonl().decode().splitlines()
    assert json.loads(lines_out[0])["file"] == str(p)


def test_aya_dataset_and_collection_shapes(tmp_path):
    aya = tmp_path / "aya.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"inputs": "Ni nini maana ya neno 'harambee'?", "targets": "Kufanya kazi pamoja.",
         "language": "Swahili", "language_code": "swh", "annotation_type": "original-annotations", "user_id": "u1"},
        {"inputs": "", "targets": "x", "language": "Swahili", "language_code": "swh",
         "annotation_type": "original-annotations", "user_id": "u2"},
    ]), aya)
    coll = tmp_path / "coll.jsonl"
    coll.write_text(json.dumps({
        "id": 1, "inputs": "Résume ce texte : Le chat dort sur le canapé toute la journée.",
        "targets": "Le chat dort.", "dataset_name": "xlsum", "sub_dataset_name": "-", "task_type": "summarization",
        "template_id": 1, "language": "fra", "script": "Latn", "split": "train",
    }, ensure_ascii=False) + "\n")
    r = read([str(aya), str(coll)])
    by_lang = {s.language_code: s for s in r.seeds}
    assert by_lang["sw"].task == "open_ended" and by_lang["sw"].source == "aya_dataset"
    assert by_lang["fr"].task == "summarization" and by_lang["fr"].source == "aya_collection/xlsum"
    assert [(q.row, q.field, q.reason) for q in r.quarantine] == [(1, "inputs", "empty_text")]


def test_folder_and_glob_inputs(tmp_path):
    (tmp_path / "a").mkdir()
    for i, lang in enumerate(["en", "de"]):
        (tmp_path / "a" / f"{i}.jsonl").write_text(json.dumps(
            {"language": lang, "task": "open_ended", "instruction": f"Tell me a fact number {i}."}) + "\n")
    assert len(read([str(tmp_path / "a")]).seeds) == 2
    assert len(read([str(tmp_path / "a" / "1.*")]).seeds) == 1


def test_seed_id_is_a_content_hash():
    a = seed_id("en", "open_ended", "Tell me  a joke.")
    assert a == seed_id("en", "open_ended", "Tell me a joke.")  # whitespace-insensitive
    assert a != seed_id("de", "open_ended", "Tell me a joke.")
    assert len(a) == 16


@pytest.mark.parametrize("code", ["swh", "Swahili", "sw"])
def test_language_aliases_normalise(tmp_path, code):
    p = tmp_path / "s.jsonl"
    p.write_text(json.dumps({"language": code, "task": "open_ended", "instruction": "Habari yako leo?"}) + "\n")
    assert read([str(p)]).seeds[0].language_code == "sw"


# ------------------------------------------------------------------ files as people have them

_ROWS = [
    {"language": "en", "task": "question_answering", "instruction": "Why is the sky blue on a clear day?",
     "reference_answer": "Rayleigh scattering."},
    {"language": "es", "task": "question_answering", "instruction": "¿Por qué el mar es salado?",
     "reference_answer": "Por los minerales."},
]


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


@pytest.mark.parametrize("name", ["seeds.jsonl.gz", "seeds.json.gz"])
def test_gzipped_jsonl_is_read_once_decompressed(tmp_path, name):
    import gzip

    (tmp_path / name).write_bytes(gzip.compress(_jsonl(_ROWS)))
    r = read([str(tmp_path / name)])
    assert r.quarantine == [] and r.rows_read == 2
    assert [s.instruction for s in r.seeds] == [row["instruction"] for row in _ROWS]
    # the folder form goes through pyarrow's filesystem, which decompresses by extension
    assert [s.instruction for s in read([str(tmp_path)]).seeds] == [row["instruction"] for row in _ROWS]


def test_byte_order_mark_does_not_cost_the_first_row(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + _jsonl(_ROWS))
    r = read([str(p)])
    assert r.quarantine == [] and len(r.seeds) == 2
    assert r.seeds[0].instruction == _ROWS[0]["instruction"]


@pytest.mark.parametrize("content, expected", [
    (b"\x1f\x8b\x08\x00 not really gzip", "not a readable gzip file"),
    (b'{"language": "en"}\n', "named .gz but not gzip-compressed"),
])
def test_unreadable_gzip_names_the_file(tmp_path, content, expected):
    from m2l_ray.errors import SeedError

    p = tmp_path / "broken.jsonl.gz"
    p.write_bytes(content)
    with pytest.raises(SeedError, match=expected) as e:
        read([str(p)])
    assert str(p) in str(e.value)
