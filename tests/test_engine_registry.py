"""Engine kinds are registered, not branched on: a new kind is one spec and its config class."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest

from m2l_ray.config import EngineConfig, JobConfig, config_from_dict
from m2l_ray.engines.base import Completion, StepParams
from m2l_ray.engines.openai_settings import OpenAIEngineConfig, OpenAISettings
from m2l_ray.engines.registry import (
    EngineSpec,
    build_engine,
    engine_kinds,
    engine_spec,
    register_engine,
    unregister_engine,
)
from m2l_ray.errors import ConfigError
from m2l_ray.placement import plan_actors
from m2l_ray.validation import knob, need


@dataclass(frozen=True)
class ToyEngineConfig(EngineConfig):
    kind: str = "toy"
    greeting: str = knob("hello", choices=("hello", "hi"))
    port: int | None = knob(None, ge=1, hashed=False)

    def check(self, prefix: str, source: str | None) -> None:
        super().check(prefix, source)
        need(self.greeting != "hi" or self.port is None, f"{prefix}.port", "not with hi", source)


class ToyEngine:
    kind = "toy"

    def __init__(self, job: JobConfig) -> None:
        self.model = job.engine.model
        self.greeting = job.engine.greeting

    async def chat(self, messages: Sequence[dict[str, str]], params: StepParams, request_id: str) -> Completion:
        return Completion(self.greeting, 1, 1, "stop")

    def close(self) -> None:
        pass


checked: list[str] = []


@pytest.fixture
def toy() -> Iterator[EngineSpec]:
    spec = register_engine(EngineSpec(
        kind="toy", build=ToyEngine, config=ToyEngineConfig,
        preflight=lambda job: checked.append(job.engine.greeting),
        in_flight=lambda job: 7, remote=True,
    ))
    yield spec
    unregister_engine("toy")


def test_a_registered_kind_is_read_built_and_placed(toy):
    cfg = config_from_dict({"engine": {"kind": "toy", "greeting": "hi", "model": "m"}}, source="job.yaml")
    assert isinstance(cfg.engine, ToyEngineConfig) and cfg.engine.greeting == "hi"
    engine = build_engine(cfg)
    assert isinstance(engine, ToyEngine) and engine.greeting == "hi"
    spec = engine_spec(cfg.engine.kind)
    spec.preflight(cfg)
    assert checked[-1] == "hi" and spec.in_flight(cfg) == 7 and spec.pricing(cfg) is None
    assert plan_actors(cfg.engine, {"CPU": 4, "GPU": 8}).gpus_per_actor == 0  # remote: no GPU
    # its own knobs: ranges, choices, cross-checks, hash exclusion
    for raw, key in [({"greeting": "hey"}, "engine.greeting"), ({"port": 0}, "engine.port"),
                     ({"greeting": "hi", "port": 80}, "engine.port"), ({"base_url": "x"}, "engine.base_url")]:
        with pytest.raises(ConfigError) as e:
            config_from_dict({"engine": {"kind": "toy", **raw}})
        assert e.value.key == key
    moved = config_from_dict({"engine": {"kind": "toy", "greeting": "hello", "port": 8080}})
    assert moved.config_hash() == config_from_dict({"engine": {"kind": "toy"}}).config_hash()
    assert "port" not in moved.hashed()["engine"] and moved.hashed()["engine"]["greeting"] == "hello"


def test_unknown_kind_lists_the_registered_ones(toy):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"engine": {"kind": "tgi"}}, source="job.yaml")
    assert e.value.key == "engine.kind" and "'tgi' is not one of vllm, openai, toy" in str(e.value)
    unregister_engine("toy")
    assert engine_kinds() == ("vllm", "openai")
    with pytest.raises(ConfigError, match="'toy' is not one of vllm, openai"):
        config_from_dict({"engine": {"kind": "toy"}})


def test_a_kind_is_registered_once(toy):
    with pytest.raises(ValueError, match="already registered"):
        register_engine(EngineSpec(kind="toy", build=ToyEngine))
    assert register_engine(toy) is toy  # the same spec again is harmless


def test_builtin_kinds_have_their_own_sections():
    vllm = config_from_dict({})
    assert type(vllm.engine) is EngineConfig and engine_spec("vllm").in_flight(vllm) == 32
    with pytest.raises(ConfigError) as e:  # the openai engine's keys are its own
        config_from_dict({"engine": {"base_url": "http://x/v1"}})
    assert e.value.key == "engine.base_url" and "unknown key" in str(e.value)
    oa = config_from_dict({"engine": {"kind": "openai", "base_url": "http://x/v1", "num_actors": 2,
                                      "openai": {"job_max_in_flight": 10, "price_per_1k_prompt_tokens": 2}}})
    assert isinstance(oa.engine, OpenAIEngineConfig) and isinstance(oa.engine.openai, OpenAISettings)
    spec = engine_spec("openai")
    assert spec.remote and spec.in_flight(oa) == 5 and spec.pricing(oa).cost(1000, 0) == 2.0
    with pytest.raises(ConfigError) as e:  # engine.openai is read with the section, key paths and all
        config_from_dict({"engine": {"kind": "openai", "base_url": "http://x", "openai": {"max_retries": -1}}})
    assert e.value.key == "engine.openai.max_retries"


def test_vllm_preflight_names_a_missing_model_folder(tmp_path):
    cfg = config_from_dict({"engine": {"model": str(tmp_path / "nope")}}, source="job.yaml")
    with pytest.raises(ConfigError) as e:
        engine_spec("vllm").preflight(cfg)
    assert e.value.key == "engine.model" and "model folder not found" in str(e.value)
    engine_spec("vllm").preflight(config_from_dict({"engine": {"model": str(tmp_path)}}))
