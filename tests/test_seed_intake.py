"""The distributed seed intake (seed_intake) against the in-memory reader it replaces
for large pools: the same selection, the same quarantine, pruning before normalisation."""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from m2l_ray.config import JobConfig, SeedsConfig, SeedSource
from m2l_ray.io import Store
from m2l_ray.languages import LanguageRegistry
from m2l_ray.layout import SEED_QUARANTINE_KEY, SEED_QUARANTINE_SHARDS
from m2l_ray.seeds.intake import DISTRIBUTED, MEMORY, TopK, choose, intake
from m2l_ray.taxonomy import Taxonomy

REG = LanguageRegistry.load()
TASKS = frozenset(Taxonomy.load().tasks)
LANGS = ["en", "sw", "fr", "hi", "ru", "es"]
M2L_TASKS = ["question_answering", "summarization", "open_ended"]


def _m2l_row(rng: random.Random, i: int) -> dict:
    return {"language": rng.choice(LANGS), "task": rng.choice(M2L_TASKS),
            "instruction": f"Question {i % 37}: why is thing {i % 11} the way it is?",
            "reference_answer": f"Because {i}."}


def _aya_dataset_row(rng: random.Random, i: int) -> dict:
    code = rng.choice(["swh", "eng", "fra", "hin", "zho"])
    return {"inputs": f"Eleza jambo {i % 41} kwa ufupi tafadhali.", "targets": f"Jibu {i}.",
            "language": code, "language_code": code, "annotation_type": "original-annotations",
            "user_id": f"u{i}"}


def _aya_collection_row(rng: random.Random, i: int) -> dict:
    return {"id": i, "inputs": f"Résume ce texte numéro {i % 29} : le chat dort.", "targets": "Le chat dort.",
            "dataset_name": rng.choice(["xlsum", "xquad"]), "sub_dataset_name": "-",
            "task_type": rng.choice(["summarization", "question-answering", "paraphrasing"]),
            "template_id": 1, "language": rng.choice(["fra", "spa", "rus"]), "script": "Latn", "split": "train"}


def _lines(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def make_pool(root: Path) -> list[SeedSource]:
    """All three shapes, JSONL, JSONL.gz (one named without .gz) and Parquet in several
    row groups, exact duplicates within and across files, bad lines and bad rows."""
    rng = random.Random(7)
    m2l = root / "m2l"
    m2l.mkdir()
    rows = [_m2l_row(rng, i) for i in range(900)]
    (m2l / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + _lines(rows[:300]) + b"\n\n{broken\n[1]\n"
                                  + b'{"language": "en", "task": "open_ended", "instruction": "caf\xe9"}\n')
    (m2l / "b.jsonl.gz").write_bytes(gzip.compress(_lines(rows[250:600])))  # overlaps a.jsonl
    (m2l / "c.data").write_bytes(gzip.compress(_lines(rows[600:] + [{**rows[0], "language": "qq"},
                                                                    {**rows[1], "instruction": ""}])))
    aya = root / "aya_dataset"
    aya.mkdir()
    pq.write_table(pa.Table.from_pylist([_aya_dataset_row(rng, i) for i in range(1200)]),
                   aya / "train-00000-of-00002.parquet", row_group_size=100)
    pq.write_table(pa.Table.from_pylist([_aya_dataset_row(rng, i) for i in range(1200, 1500)]
                                        + [{**_aya_dataset_row(rng, 0), "inputs": None}]),
                   aya / "train-00001-of-00002.parquet", row_group_size=64)
    coll = root / "coll.jsonl"
    coll.write_bytes(_lines([_aya_collection_row(rng, i) for i in range(400)]))
    return [SeedSource(str(m2l)), SeedSource(str(m2l / "c.data"), format="jsonl"),
            SeedSource(str(aya / "*.parquet")), SeedSource(str(coll))]


def _ctx(sources, job_seed=3, **seeds):
    cfg = JobConfig(seed=job_seed, seeds=SeedsConfig(sources=tuple(sources), per_group_cap=seeds.pop("cap", 5),
                                                    **seeds))
    return SimpleNamespace(cfg=cfg, registry=REG, task_ids=TASKS, storage=None)


def _quarantine(store: Store) -> list[dict]:
    keys = [k for k in store.list("quarantine/") if k.endswith(".jsonl")]
    return sorted((json.loads(x) for k in keys for x in store.get_bytes(k).decode().splitlines()),
                  key=lambda q: (q["file"], q["row"]))


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return make_pool(tmp_path_factory.mktemp("pool"))


@pytest.fixture
def small_chunks(monkeypatch):
    """Parquet files split into many read tasks, so that copies of a seed and a group's
    candidates meet only in the shuffle, as they do in a large pool."""
    from m2l_ray.seeds import intake as seed_intake

    monkeypatch.setattr(seed_intake, "CHUNK_ROWS", 150)


@pytest.mark.usefixtures("small_chunks")
def test_distributed_selects_exactly_what_the_in_memory_reader_selects(curation_ray, pool, tmp_path):
    """(With a language and task filter: test_validate_on_s3_... and test_language_filter_...)"""
    ctx = _ctx(pool)
    mem_store, dist_store = Store.open(str(tmp_path / "m")), Store.open(str(tmp_path / "d"))
    mem_store.put_bytes(f"{SEED_QUARANTINE_SHARDS}rows-00000.jsonl", b"left by a distributed run\n")
    dist_store.put_bytes(SEED_QUARANTINE_KEY, b"left by an in-memory run\n")
    dist_store.put_bytes(f"{SEED_QUARANTINE_SHARDS}rows-99999.jsonl", b"left by a bigger pool\n")
    mem = intake(ctx, mem_store, mode=MEMORY)
    dist = intake(ctx, dist_store, mode=DISTRIBUTED)
    assert mem.mode == MEMORY and dist.mode == DISTRIBUTED
    assert dist.selection == mem.selection  # seeds (with source_file/source_row), groups, counts
    assert len(mem.selection.selected) > 20 and mem.selection.over_cap > 0
    assert dist.usable_per_group == mem.usable_per_group
    assert dist.quarantine_reasons == mem.quarantine_reasons
    assert asdict(dist.counts) == asdict(mem.counts)
    assert mem.quarantine_reasons["duplicate_seed"] > 10
    # the quarantine: the same records, file/row/field/reason/detail, in shards
    assert _quarantine(dist_store) == _quarantine(mem_store) == sorted(
        (asdict(q) for q in mem.quarantine), key=lambda q: (q["file"], q["row"]))
    assert mem_store.list("quarantine/") == [SEED_QUARANTINE_KEY]
    shards = {k: dist_store.get_bytes(k) for k in dist_store.list("quarantine/")}
    assert set(shards) == set(dist.shards) and all(k.startswith(SEED_QUARANTINE_SHARDS) for k in shards)
    assert any("/duplicates-" in k for k in shards) and any("/rows-" in k for k in shards)
    # deterministic: a second run writes the same shards, byte for byte
    again = intake(ctx, dist_store, mode=DISTRIBUTED)
    assert again.selection == dist.selection
    assert {k: dist_store.get_bytes(k) for k in dist_store.list("quarantine/")} == shards


def test_language_filter_prunes_before_normalisation(curation_ray, tmp_path):
    """5 of many languages: the others are counted, never normalised; a partition folder
    of another language is not even opened (its file here is not Parquet at all)."""
    rng = random.Random(1)
    langs = ["en", "sw", "fr", "hi", "ru", "es", "de", "it", "pt", "ja"]
    rows = [{"inputs": f"Text {i} to explain.", "targets": "ok", "language": lang, "language_code": lang,
             "annotation_type": "x", "user_id": "u"} for i, lang in enumerate(rng.choice(langs) for _ in range(3000))]
    rows.sort(key=lambda r: r["language_code"])  # row groups of one language each, mostly
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pool.parquet", row_group_size=100)
    (tmp_path / "jsonl").mkdir()
    (tmp_path / "jsonl" / "pool.jsonl").write_bytes(_lines(rows[::3]))
    (tmp_path / "language=de").mkdir()
    (tmp_path / "language=de" / "part-0.parquet").write_bytes(b"not parquet at all")
    want = ("sw", "fr", "en", "hi", "es")
    sources = [SeedSource(str(tmp_path / "pool.parquet")), SeedSource(str(tmp_path / "jsonl")),
               SeedSource(str(tmp_path / "language=de"))]
    ctx = _ctx(sources, languages=want)
    kept = sum(1 for r in rows if r["language_code"] in want) + sum(1 for r in rows[::3] if r["language_code"] in want)
    got = {mode: intake(ctx, mode=mode) for mode in (MEMORY, DISTRIBUTED)}
    for mode, g in got.items():
        assert g.counts.normalised == kept, mode  # the other languages' rows never reached normalise_row
        assert g.counts.pruned == g.counts.rows_read - kept and g.counts.files_pruned == 1
        assert {k.split("/")[0] for k in g.usable_per_group} == set(want)
        assert g.selection.skipped_by_filter == g.counts.pruned
    assert got[MEMORY].selection == got[DISTRIBUTED].selection
    # without the filter the partition folder is opened, and its file is reported
    from m2l_ray.errors import SeedError

    with pytest.raises(SeedError, match=r"language=de/part-0.parquet: not a readable Parquet file"):
        intake(_ctx(sources), mode=MEMORY)


@pytest.mark.parametrize("mode", [MEMORY, DISTRIBUTED])
def test_unreadable_file_is_a_seed_error_naming_it(curation_ray, tmp_path, mode):
    from m2l_ray.errors import SeedError

    (tmp_path / "a.jsonl").write_bytes(_lines([_m2l_row(random.Random(0), 1)]))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b'{"language": "en"}\n')[:20])  # cut short
    with pytest.raises(SeedError, match=r"b\.jsonl\.gz: not a readable gzip file"):
        intake(_ctx([SeedSource(str(tmp_path))]), mode=mode)


def test_the_path_is_chosen_by_input_size(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b"x" * 1500)
    (tmp_path / "b.jsonl").write_bytes(b"x" * 1500)
    files = [(0, None, str(tmp_path / "a.jsonl")), (0, None, str(tmp_path / "b.jsonl"))]
    assert choose(SeedsConfig(), files)[0] == MEMORY  # 3 kB < 64 MB
    assert choose(SeedsConfig(distributed_min_mb=0.003), files)[0] == DISTRIBUTED
    mode, why = choose(SeedsConfig(distributed_min_mb=0.0031), files)
    assert mode == MEMORY and "0.0 MB < seeds.distributed_min_mb (0.0031 MB)" in why
    assert choose(SeedsConfig(distributed_min_mb=0), files) == (DISTRIBUTED, "seeds.distributed_min_mb is 0")
    # the package's own sample and the test jobs stay in the driver
    ctx = _ctx([SeedSource("package:sample")])
    got = intake(ctx)
    assert got.mode == MEMORY and "MB < seeds.distributed_min_mb" in got.why


def test_threshold_is_validated_and_not_part_of_the_config_hash():
    from m2l_ray.config import config_from_dict
    from m2l_ray.errors import ConfigError

    base = config_from_dict({"seeds": {"sources": ["package:sample"]}})
    other = config_from_dict({"seeds": {"sources": ["package:sample"], "distributed_min_mb": 0}})
    assert other.seeds.distributed_min_mb == 0 and base.config_hash() == other.config_hash()
    with pytest.raises(ConfigError, match="seeds.distributed_min_mb"):
        config_from_dict({"seeds": {"distributed_min_mb": -1}})
    with pytest.raises(ConfigError, match="seeds.distributed_min_mb"):
        config_from_dict({"seeds": {"distributed_min_mb": "big"}})


def test_top_k_keeps_the_first_copy_and_the_smallest_keys():
    top = TopK(2)
    for key, item in [((5, "e"), "e1"), ((3, "c"), "c1"), ((3, "c"), "c2"), ((9, "z"), "z1"),
                      ((1, "a"), "a1"), ((5, "e"), "e2"), ((2, "b"), "b1")]:
        top.offer(key, item)
    assert top.best() == ["a1", "b1"]
    top = TopK(3)
    for key, item in [((5, "e"), "e1"), ((3, "c"), "c1"), ((3, "c"), "c2"), ((5, "e"), "e2")]:
        top.offer(key, item)
    assert top.best() == ["c1", "e1"]


def test_validate_on_s3_reports_the_pool_and_agrees_across_paths(s3_env, tmp_path):
    """`m2l validate` on an s3:// pool: in the driver by default, on Ray Data with
    seeds.distributed_min_mb=0; the same answer, and the output says which and why."""
    from e2e_util import m2l, small_job, write_job

    local = tmp_path / "pool"
    local.mkdir()
    sources = make_pool(local)
    bucket = Store.open(f"s3://{s3_env.bucket}/intake-pool", s3_env.storage_options())
    for f in local.rglob("*"):
        if f.is_file():
            bucket.put_bytes(f.relative_to(local).as_posix(), f.read_bytes())
    uri = f"s3://{s3_env.bucket}/intake-pool/"
    cfg = small_job(str(tmp_path / "out"), storage={"path_style": True})
    cfg["seeds"] = {"sources": [{"path": s.path.replace(str(local) + "/", uri), "format": s.format}
                                for s in sources],
                    "per_group_cap": 4, "languages": ["en", "sw", "fr", "es"],
                    "tasks": ["open_ended", "summarization", "question_answering"]}
    job = write_job(tmp_path / "job.yaml", cfg)
    runs = {}
    for name, extra in [("memory", []), ("distributed", ["--set", "seeds.distributed_min_mb=0"])]:
        proc = m2l("validate", "--config", str(job), *extra, cwd=tmp_path, timeout=300,
                   extra_env={"RAY_ADDRESS": ""})
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = json.loads(proc.stdout)
    mem, dist = runs["memory"], runs["distributed"]
    assert mem["intake"]["path"] == "memory" and "MB < seeds.distributed_min_mb (64 MB)" in mem["intake"]["why"]
    assert dist["intake"]["path"] == "distributed" and dist["intake"]["why"] == "seeds.distributed_min_mb is 0"
    assert dist["intake"]["seconds"] > 0 and dist["seconds"] >= dist["intake"]["seconds"]
    for key in ("seeds_read", "seeds_usable", "quarantined", "selected", "selection_digest", "pool",
                "groups", "planned", "config_hash"):
        assert dist[key] == mem[key], key
    assert dist["pool"]["pruned"] > 0 and dist["quarantined"]["duplicate_seed"] > 0
    assert set(dist["groups"]) == {g for g in dist["groups"] if g.split("/")[0] in ("en", "sw", "fr", "es")}
    assert sum(g["selected"] for g in dist["groups"].values()) == dist["selected"]
    assert not (tmp_path / "out").exists()  # validate writes nothing, quarantine shards included
