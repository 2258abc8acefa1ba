"""Cross-checks that need the registry and taxonomy: still before Ray starts."""

from __future__ import annotations

import pytest

from m2l_ray.config import config_from_dict
from m2l_ray.context import prepare
from m2l_ray.errors import ConfigError


def test_unknown_language_code_is_named():
    cfg = config_from_dict({"seeds": {"languages": ["en", "xx"]}}, source="job.yaml")
    with pytest.raises(ConfigError) as e:
        prepare(cfg)
    assert e.value.key == "seeds.languages[1]" and "'xx'" in str(e.value)


def test_missing_seed_file_is_named(tmp_path):
    cfg = config_from_dict({"seeds": {"sources": [str(tmp_path / "missing.jsonl")]}})
    with pytest.raises(ConfigError) as e:
        prepare(cfg)
    assert e.value.key == "seeds.sources[0].path" and "missing.jsonl" in str(e.value)


def test_unknown_task_is_named():
    cfg = config_from_dict({"seeds": {"tasks": ["question_answering", "poetry_slam"]}})
    with pytest.raises(ConfigError, match="poetry_slam"):
        prepare(cfg)


def test_extra_language_is_accepted_and_validated():
    extra = {"extra": [{"code": "tok", "name": "Toki Pona", "script": "Latn"}]}
    # lid.176 can't identify Toki Pona: without a policy the job is stopped, naming the key
    no_policy = config_from_dict({"languages": extra, "seeds": {"languages": ["tok"]}})
    with pytest.raises(ConfigError) as e:
        prepare(no_policy)
    assert e.value.key == "curation.lid.unsupported_policy" and "tok (Toki Pona)" in str(e.value)
    ok = config_from_dict({
        "languages": extra,
        "seeds": {"languages": ["tok"]},
        "curation": {"lid": {"policies": {"tok": "script_only"}}},
    })
    ctx = prepare(ok)
    assert ctx.registry.get("tok").name == "Toki Pona"
    assert any("tok" in w and "script_only" in w for w in ctx.warnings)
    bad = config_from_dict({"languages": {"extra": [{"code": "tok", "name": "Toki Pona"}]}})
    with pytest.raises(ConfigError) as e:
        prepare(bad)
    assert e.value.key == "languages.extra[0].script"
