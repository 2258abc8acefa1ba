"""Job config: parsing, overrides, and errors that name the key before Ray starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from m2l_ray.config import apply_overrides, config_from_dict, load_config
from m2l_ray.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_local_job_loads_with_overrides():
    cfg = load_config(REPO / "jobs/local.yaml", ["engine.sampling.max_tokens=256", "turns.max=4"])
    assert cfg.engine.sampling.max_tokens == 256
    assert cfg.turns.max == 4
    assert cfg.engine.model == "smollm2-135m-instruct"


def test_override_parses_yaml_values_and_creates_sections():
    out = apply_overrides({"a": {"b": 1}}, ["a.c=[x, y]", "d.e=null", "a.b=2.5"])
    assert out == {"a": {"b": 2.5, "c": ["x", "y"]}, "d": {"e": None}}


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        ({"turns": {"min": 4, "max": 2}}, "turns.min", "turns.min (4) > turns.max (2)"),
        ({"engine": {"kind": "tgi"}}, "engine.kind", "not one of"),
        ({"engine": {"modle": "x"}}, "engine.modle", "unknown key"),
        ({"bogus": 1}, "bogus", "unknown key"),
        ({"engine": {"max_num_seqs": 0}}, "engine.max_num_seqs", ">= 1"),
        ({"engine": {"max_restarts": -1}}, "engine.max_restarts", ">= 0"),
        ({"engine": {"max_restarts": True}}, "engine.max_restarts", "must be int"),
        ({"engine": {"max_model_len": 512, "sampling": {"max_tokens": 600}}}, "engine.sampling.max_tokens", "no room"),
        ({"engine": {"extra": {"api_key": "sk-123"}}}, "engine.extra.api_key", "never go in the config"),
        ({"engine": {"kind": "openai"}}, "engine.base_url", "required"),
        ({"seeds": {"sources": [{"format": "jsonl"}]}}, "seeds.sources[0].path", "missing"),
        ({"seeds": {"sources": [{"path": "x", "shape": "alpaca"}]}}, "seeds.sources[0].shape", "alpaca"),
        ({"seeds": {"languages": []}}, "seeds.languages", "non-empty"),
        ({"job": {"seed": "abc"}}, "job.seed", "must be int"),
        ({"engine": {"sampling": {"top_p": 0}}}, "engine.sampling.top_p", "(0, 1]"),
    ],
)
def test_errors_name_the_key(raw, key, words):
    with pytest.raises(ConfigError) as e:
        config_from_dict(raw, source="job.yaml")
    assert e.value.key == key
    assert words in str(e.value)
    assert "job.yaml" in str(e.value)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_bad_yaml_is_a_clear_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("job: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_config_hash_ignores_output_location_but_not_content(tmp_path):
    base = yaml.safe_load((REPO / "jobs/local.yaml").read_text())
    a = config_from_dict(base)
    b = config_from_dict(apply_overrides(base, ["output.uri=s3://bucket/elsewhere"]))
    c = config_from_dict(apply_overrides(base, ["job.seed=1"]))
    robust = config_from_dict(apply_overrides(base, ["engine.max_restarts=0", "engine.stall_seconds=60"]))
    assert a.config_hash() == b.config_hash() == robust.config_hash()
    assert a.config_hash() != c.config_hash()
    assert a.config_hash() == config_from_dict(base).config_hash()
