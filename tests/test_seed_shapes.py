"""Seed shapes as registry entries: a new shape is one ``register`` call, and from then on
the job config accepts its name and the reader normalises, detects and prunes its rows."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from m2l_ray.config import SeedsConfig, SeedSource, config_from_dict
from m2l_ray.errors import ConfigError
from m2l_ray.languages import LanguageRegistry
from m2l_ray.seeds import shapes
from m2l_ray.seeds.reader import read_seeds
from m2l_ray.seeds.records import seed_id
from m2l_ray.seeds.shapes import SHAPE_CHOICES, SeedShape, register
from m2l_ray.taxonomy import Taxonomy

REG = LanguageRegistry.load()
TASKS = set(Taxonomy.load().tasks)

QA_PAIRS = SeedShape(
    name="qa_pairs",
    required=frozenset({"question", "answer", "lang"}),
    hints=frozenset({"question", "answer", "lang", "topic"}),
    text="question", reference="answer", language=("lang",),
    task=lambda _row, source: source.task or "question_answering",
    origin=lambda row, _path: f"qa_pairs/{row.get('topic', 'misc')}",
)


@pytest.fixture
def qa_pairs(monkeypatch):
    """The registry with one more shape, for this test only."""
    monkeypatch.setattr(shapes, "SHAPES", dict(shapes.SHAPES))
    return register(QA_PAIRS)


def _sources(path, shape="auto"):
    return {"seeds": {"sources": [{"path": str(path), "shape": shape}]}}


def test_builtin_shapes_are_the_config_choices():
    assert tuple(SHAPE_CHOICES) == ("auto", "m2l", "aya_dataset", "aya_collection")
    assert "aya_dataset" in SHAPE_CHOICES and "qa_pairs" not in SHAPE_CHOICES


def test_config_accepts_a_registered_shape_and_names_it_in_errors(qa_pairs, tmp_path):
    cfg = config_from_dict(_sources(tmp_path, "qa_pairs"), source="job.yaml")
    assert cfg.seeds.sources[0].shape == "qa_pairs"
    with pytest.raises(ConfigError) as e:
        config_from_dict(_sources(tmp_path, "alpaca"), source="job.yaml")
    assert e.value.key == "seeds.sources[0].shape" and "qa_pairs" in str(e.value)


def test_unregistered_shape_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="'qa_pairs' is not one of"):
        config_from_dict(_sources(tmp_path, "qa_pairs"), source="job.yaml")


def test_register_refuses_auto_and_a_taken_name(qa_pairs):
    for name in ("auto", "m2l", "qa_pairs"):
        with pytest.raises(ValueError, match=name):
            register(SeedShape(**{**QA_PAIRS.__dict__, "name": name}))


@pytest.mark.parametrize("shape", ["qa_pairs", "auto"])
def test_rows_of_a_registered_shape_are_normalised(qa_pairs, tmp_path, shape):
    """Named or detected from its hints, the shape's rows become seeds; its own columns
    are the ones a quarantine record names."""
    rows = [
        {"question": "  Mji mkuu wa Kenya ni upi?  ", "answer": "Nairobi.", "lang": "sw", "topic": "geo"},
        {"question": "What is the capital of France?", "lang": "en", "topic": "geo"},  # no answer
        {"question": "Quelle est la capitale du Japon ?", "answer": "Tokyo.", "lang": "qq", "topic": "geo"},
        {"question": 7, "answer": "x", "lang": "en", "topic": "geo"},
    ]
    p = tmp_path / "qa.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    got = read_seeds(SeedsConfig(sources=(SeedSource(str(p), shape=shape),)), REG, TASKS)
    [seed] = got.seeds
    assert (seed.language_code, seed.task, seed.instruction, seed.reference_answer, seed.source) == (
        "sw", "question_answering", "Mji mkuu wa Kenya ni upi?", "Nairobi.", "qa_pairs/geo")
    assert seed.seed_id == seed_id("sw", "question_answering", "Mji mkuu wa Kenya ni upi?")
    assert [(q.row, q.field, q.reason) for q in got.quarantine] == [
        (2, "answer", "missing_field"), (3, "lang", "unknown_language"), (4, "question", "wrong_type")]
    assert "qa_pairs rows need answer" in got.quarantine[0].detail


def test_parquet_of_a_registered_shape_is_pruned_on_its_route_columns(qa_pairs, tmp_path):
    """seeds.languages prunes a Parquet file by the shape's language column alone."""
    p = tmp_path / "qa.parquet"
    pq.write_table(pa.table({
        "question": ["Mji mkuu wa Kenya ni upi?", "What is the capital of France?"],
        "answer": ["Nairobi.", "Paris."], "lang": ["sw", "en"], "topic": ["geo", "geo"],
    }), p)
    cfg = SeedsConfig(sources=(SeedSource(str(p)),), languages=("en",))
    got = read_seeds(cfg, REG, TASKS)
    assert [s.instruction for s in got.seeds] == ["What is the capital of France?"]
    assert (got.rows_read, got.pruned, got.normalised, got.quarantine) == (2, 1, 1, [])
