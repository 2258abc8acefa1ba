"""The openai engine against a real local HTTP server that fails on a schedule.

Every test drives ``OpenAIEngine`` over real sockets (tests/flaky_server.py) with many
concurrent chats, and checks what the server saw: requests per key, arrival times,
peak concurrency. Timings are lower bounds with small slack, never upper bounds that a
busy 2-core machine could miss.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from flaky_server import OK, Act, FlakyServer, e429, e500, empty, malformed, slow

from m2l_ray.config import config_from_dict
from m2l_ray.engines.base import RequestFailed, StepParams
from m2l_ray.engines.openai_engine import OpenAIEngine
from m2l_ray.engines.openai_http import request_body
from m2l_ray.engines.openai_preflight import preflight
from m2l_ray.engines.openai_settings import OpenAISettings
from m2l_ray.engines.request_cache import request_key
from m2l_ray.errors import ConfigError, M2LError
from m2l_ray.usage import usage_summary

FAST = {"backoff_base": 0.02, "backoff_max": 0.1}
P = StepParams(max_tokens=64, temperature=0.7, top_p=0.9, seed=1)


def job(url: str, out: Path, openai: dict[str, Any] | None = None, **engine: Any):
    return config_from_dict({
        "engine": {"kind": "openai", "model": "test-model", "base_url": url,
                   "openai": {"cache": False, **FAST, **(openai or {})}, **engine},
        "output": {"uri": str(out)},
    })


def msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


async def chat_all(engine: OpenAIEngine, keys: list[str], params: StepParams = P) -> list[Any]:
    async def one(k: str) -> Any:
        try:
            return await engine.chat(msgs(k), params, f"id-{k}")
        except RequestFailed as e:
            return e

    try:
        return await asyncio.gather(*(one(k) for k in keys))
    finally:
        await engine.aclose()


def run(engine: OpenAIEngine, keys: list[str], params: StepParams = P) -> list[Any]:
    return asyncio.run(chat_all(engine, keys, params))


# ---------------------------------------------------------------- settings and body


def test_settings_defaults_and_validation():
    s = OpenAISettings.from_dict({})
    assert (s.max_in_flight, s.timeout_seconds, s.max_retries, s.cache) == (32, 60.0, 6, True)
    with pytest.raises(ConfigError) as e:
        OpenAISettings.from_dict({"max_inflight": 3}, "job.yaml")
    assert e.value.key == "engine.openai.max_inflight" and "max_in_flight" in str(e.value)
    for bad in ({"max_in_flight": 0}, {"timeout_seconds": 0}, {"cache": "yes"},
                {"requests_per_minute": -1}, {"max_tokens_field": "n_tokens"}, {"max_retries": 1.5}):
        with pytest.raises(ConfigError) as e:
            OpenAISettings.from_dict(bad)
        assert e.value.key == f"engine.openai.{next(iter(bad))}"


def test_job_wide_limits_are_split_across_actors():
    s = OpenAISettings.from_dict({"max_in_flight": 32, "job_max_in_flight": 50,
                                  "requests_per_minute": 600, "tokens_per_minute": 90000})
    assert s.per_actor(1) == (32, 600, 90000)
    assert s.per_actor(4) == (12, 150, 22500)  # 4 x 12 <= 50
    with pytest.raises(ConfigError, match="fewer than the 64 engine actors"):
        s.per_actor(64)


def test_request_body_maps_sampling_and_extra():
    p = StepParams(max_tokens=100, temperature=0.5, top_p=0.8, repetition_penalty=1.0, seed=9)
    b = request_body("m", msgs("hi"), p, {"stop": ["\n\n"]})
    assert b == {"model": "m", "messages": msgs("hi"), "max_tokens": 100, "temperature": 0.5,
                 "top_p": 0.8, "seed": 9, "stop": ["\n\n"]}
    p2 = StepParams(max_tokens=100, temperature=0.5, top_p=0.8, repetition_penalty=1.1, seed=None)
    b2 = request_body("m", msgs("hi"), p2, {"seed": None, "temperature": 0.0}, "max_completion_tokens")
    assert b2["repetition_penalty"] == 1.1 and "seed" not in b2 and b2["temperature"] == 0.0
    assert b2["max_completion_tokens"] == 100 and "max_tokens" not in b2
    # base_url is not part of the key; every sampling field is
    assert request_key(b) == request_key(dict(b)) != request_key({**b, "top_p": 0.81})


def test_extra_cannot_override_the_protocol(tmp_path):
    with pytest.raises(ConfigError) as e:
        OpenAIEngine(job("http://127.0.0.1:9/v1", tmp_path, extra={"stream": True}))
    assert e.value.key == "engine.extra.stream"


# ---------------------------------------------------------------- retries


def test_every_request_completes_through_429s_and_500s(tmp_path):
    def plan(n: int, key: str, attempt: int) -> Act:
        if attempt == 0 and n % 3 == 0:
            return e500()
        if attempt <= 1 and n % 4 == 1:
            return e429(retry_after=0.05)
        return slow(0.01)

    keys = [f"question {i}" for i in range(40)]
    with FlakyServer(plan) as srv:
        eng = OpenAIEngine(job(srv.url, tmp_path, {"max_in_flight": 8}))
        out = run(eng, keys)
    assert [c.text for c in out] == [f"echo: {k}" for k in keys]
    assert srv.requests > len(keys) and eng.stats["retries"] == srv.requests - len(keys)
    assert eng.stats["http_429"] > 0 and eng.stats["http_5xx"] > 0 and eng.stats["failed"] == 0
    assert all(c.prompt_tokens > 0 and c.completion_tokens > 0 for c in out)


def test_retry_after_is_honoured(tmp_path):
    def plan(n: int, key: str, attempt: int) -> Act:
        return e429(retry_after=1.5) if key == "throttled" and attempt == 0 else OK

    with FlakyServer(plan) as srv:
        eng = OpenAIEngine(job(srv.url, tmp_path))
        out = run(eng, ["throttled"])
    t = srv.arrivals("throttled")
    assert len(t) == 2 and out[0].text == "echo: throttled"
    assert t[1] - t[0] >= 1.5  # backoff alone (0.02 s base) would have retried at once


def test_a_429_pauses_the_whole_actor(tmp_path):
    """Throttling concerns the client: requests started after the 429 wait out Retry-After too."""
    def plan(n: int, key: str, attempt: int) -> Act:
        return e429(retry_after=1.0) if key == "first" and attempt == 0 else OK

    async def go(eng: OpenAIEngine) -> None:
        first = asyncio.ensure_future(eng.chat(msgs("first"), P, "a"))
        await asyncio.sleep(0.3)  # the 429 has arrived by now
        await asyncio.gather(first, eng.chat(msgs("later"), P, "b"))
        await eng.aclose()

    with FlakyServer(plan) as srv:
        asyncio.run(go(OpenAIEngine(job(srv.url, tmp_path))))
    assert srv.arrivals("later")[0] - srv.arrivals("first")[0] >= 1.0


def test_max_in_flight_is_never_exceeded(tmp_path):
    with FlakyServer(lambda n, k, a: slow(0.05)) as srv:
        eng = OpenAIEngine(job(srv.url, tmp_path, {"max_in_flight": 4}))
        out = run(eng, [f"q{i}" for i in range(30)])
    assert all(not isinstance(c, Exception) for c in out)
    assert srv.peak_in_flight == 4 and eng.peak_in_flight == 4


def test_job_max_in_flight_divides_across_actors(tmp_path):
    with FlakyServer(lambda n, k, a: slow(0.05)) as srv:
        eng = OpenAIEngine(job(srv.url, tmp_path, {"job_max_in_flight": 6}, num_actors=2))
        run(eng, [f"q{i}" for i in range(20)])
    assert eng.max_in_flight == 3 and srv.peak_in_flight == 3


def test_requests_per_minute_spaces_requests(tmp_path):
    with FlakyServer() as srv:
        eng = OpenAIEngine(job(srv.url, tmp_path, {"requests_per_minute": 600}))  # one per 0.1 s
        run(eng, [f"q{i}" for i in range(10)])
    t = sorted(s.t for s in srv.seen)
    # the k-th request left k * 0.1 s after the first; arrival jitter on a busy machine can
    # shorten one gap, not the cumulative spacing (slack: the first request's own latency)
    assert len(t) == 10 and all(t[k] - t[0] >= 0.1 * k - 0.05 for k in range(10))
    assert t[-1] - t[0] >= 0.85


def test_tokens_per_minute_paces_by_usage(tmp_path):
    # 24000 tokens/min = 400/s in a bucket of 400. Each request reserves ~107 (7 prompt + 100
    # max_tokens) and uses 100, so the 10th can start only after (9 * 107 + 107 - 400 - 9 * 7) / 400 s
    plan = lambda n, k, a: Act(usage=(60, 40))  # noqa: E731
    params = StepParams(100, 0.7, 0.9)
    with FlakyServer(plan) as srv:
        eng = OpenAIEngine(job(srv.url, tmp_path, {"tokens_per_minute": 24000}))
        t0 = time.monotonic()
        run(eng, [f"q{i}" for i in range(10)], params)
        limited = time.monotonic() - t0
    assert limited >= 1.45
    with FlakyServer(plan) as srv:
        t0 = time.monotonic()
        run(OpenAIEngine(job(srv.url, tmp_path)), [f"q{i}" for i in range(10)], params)
        assert time.monotonic() - t0 < 1.0


def test_permanent_failures_become_request_failed_with_reasons(tmp_path):
    def plan(n: int, key: str, attempt: int) -> Act:
        return {"doomed": e500(), "throttled": e429(0.01), "garbled": malformed(),
                "silent": empty(), "hangs": slow(2.0),
                "denied": Act(401, raw=b'{"error": {"message": "bad key"}}'),
                "huge": Act(400, raw=b'{"error": {"message": "maximum context length is 2048 tokens"}}'),
                }.get(key, OK)

    keys = ["doomed", "throttled", "garbled", "silent", "hangs", "denied", "huge", "fine"]
    with FlakyServer(plan) as srv:
        eng = OpenAIEngine(job(srv.url, tmp_path, {"max_retries": 2, "timeout_seconds": 0.3}))
        out = dict(zip(keys, run(eng, keys), strict=True))
    assert out["fine"].text == "echo: fine"
    reasons = {k: v.reason for k, v in out.items() if isinstance(v, RequestFailed)}
    assert reasons == {"doomed": "http_error", "throttled": "rate_limited", "garbled": "malformed_response",
                       "silent": "empty_response", "hangs": "timeout", "denied": "auth_error",
                       "huge": "prompt_too_long"}
    assert "HTTP 500" in out["doomed"].detail and "3 attempt" in out["doomed"].detail
    # retried: transient kinds, 1 + max_retries times; not retried: answers that won't change
    counts = {k: len(srv.arrivals(k)) for k in keys}
    assert counts == {"doomed": 3, "throttled": 3, "garbled": 3, "silent": 1, "hangs": 3,
                      "denied": 1, "huge": 1, "fine": 1}
    assert eng.stats["failed"] == 7


def test_transient_malformed_and_timeouts_recover(tmp_path):
    def plan(n: int, key: str, attempt: int) -> Act:
        if attempt == 0:
            return malformed() if key.startswith("m") else slow(1.0)
        return OK

    with FlakyServer(plan) as srv:
        eng = OpenAIEngine(job(srv.url, tmp_path, {"timeout_seconds": 0.3}))
        out = run(eng, ["m1", "m2", "t1", "t2"])
    assert [c.text for c in out] == ["echo: m1", "echo: m2", "echo: t1", "echo: t2"]
    assert eng.stats["timeouts"] == 2 and eng.stats["malformed"] == 2


def test_missing_usage_is_estimated_not_zero(tmp_path):
    with FlakyServer(lambda n, k, a: Act(content="ni hao " * 10, no_usage=True)) as srv:
        eng = OpenAIEngine(job(srv.url, tmp_path))
        (c,) = run(eng, ["x" * 400])
    assert c.prompt_tokens >= 100 and c.completion_tokens == 18  # 70 bytes / 4, rounded up
    assert eng.stats["usage_missing"] == 1


def test_unreachable_server_is_a_connection_error(tmp_path):
    with FlakyServer() as srv:
        url = srv.url
    eng = OpenAIEngine(job(url, tmp_path, {"max_retries": 1}))
    (out,) = run(eng, ["x"])
    assert isinstance(out, RequestFailed) and out.reason == "connection_error"


def test_api_key_is_sent_and_never_in_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("FLAKY_KEY", "sk-right-key-123")
    with FlakyServer(api_key="sk-right-key-123") as srv:
        out = run(OpenAIEngine(job(srv.url, tmp_path, api_key_env="FLAKY_KEY")), ["x"])
        assert out[0].text == "echo: x"
        monkeypatch.setenv("FLAKY_KEY", "sk-wrong-key-456")
        (bad,) = run(OpenAIEngine(job(srv.url, tmp_path, api_key_env="FLAKY_KEY")), ["y"])
    assert bad.reason == "auth_error" and "$FLAKY_KEY" in bad.detail and "sk-wrong" not in str(bad)


# ---------------------------------------------------------------- cache


def test_cache_replays_completions_without_requests(tmp_path):
    keys = [f"q{i}" for i in range(12)]
    with FlakyServer(lambda n, k, a: Act(usage=(11, 7))) as srv:
        first = OpenAIEngine(job(srv.url, tmp_path, {"cache": True}))
        a = run(first, keys)
        assert srv.requests == 12 and first.stats["cache_misses"] == 12
        files = sorted((tmp_path / "cache/requests").glob("*/*.json"))
        assert len(files) == 12 and all(f.parent.name == f.stem[:2] for f in files)
        entry = json.loads(files[0].read_text())
        assert entry["request"]["model"] == "test-model" and entry["completion"]["prompt_tokens"] == 11

        srv.reset()
        second = OpenAIEngine(job(srv.url, tmp_path, {"cache": True}))
        b = run(second, keys)
        assert srv.requests == 0 and b == a  # same text and the original usage
        assert second.stats["cache_hits"] == 12 and second.stats["sent"] == 0

        # another sampling is another request; the cache can live elsewhere (shared by jobs)
        c = run(second, keys[:2], StepParams(64, 0.7, 0.9, seed=2))
        assert srv.requests == 2 and [x.text for x in c] == ["echo: q0", "echo: q1"]
        shared = OpenAIEngine(job(srv.url, tmp_path / "other",
                                  {"cache": True, "cache_uri": str(tmp_path / "cache/requests")}))
        assert run(shared, keys) == a and srv.requests == 2


def test_failures_are_not_cached(tmp_path):
    plan = lambda n, k, a: e500() if a == 0 else OK  # noqa: E731
    with FlakyServer(plan) as srv:
        (f,) = run(OpenAIEngine(job(srv.url, tmp_path, {"cache": True, "max_retries": 0})), ["x"])
        assert isinstance(f, RequestFailed)
        (ok,) = run(OpenAIEngine(job(srv.url, tmp_path, {"cache": True, "max_retries": 0})), ["x"])
    assert ok.text == "echo: x" and srv.requests == 2


def test_identical_requests_in_flight_are_sent_once(tmp_path):
    with FlakyServer(lambda n, k, a: slow(0.2)) as srv:
        eng = OpenAIEngine(job(srv.url, tmp_path))
        out = run(eng, ["same"] * 5 + ["other"])
    assert srv.requests == 2 and len({c.text for c in out[:5]}) == 1
    assert eng.stats["deduplicated"] == 4


# ---------------------------------------------------------------- preflight


def test_preflight_fails_fast_with_clear_messages(tmp_path, monkeypatch):
    with FlakyServer(models=["test-model", "other-model"], api_key="sk-secret-abc") as srv:
        monkeypatch.delenv("M2L_TEST_KEY", raising=False)
        with pytest.raises(M2LError, match=r"\$M2L_TEST_KEY.*unset"):
            preflight(job(srv.url, tmp_path, api_key_env="M2L_TEST_KEY"))
        monkeypatch.setenv("M2L_TEST_KEY", "sk-wrong-xyz")
        with pytest.raises(M2LError, match=r"invalid API key \(from \$M2L_TEST_KEY\)") as e:
            preflight(job(srv.url, tmp_path, api_key_env="M2L_TEST_KEY"))
        assert "sk-wrong-xyz" not in str(e.value)
        monkeypatch.setenv("M2L_TEST_KEY", "sk-secret-abc")
        preflight(job(srv.url, tmp_path, api_key_env="M2L_TEST_KEY"))  # fine
        with pytest.raises(ConfigError, match="not served .* available: other-model, test-model") as e:
            preflight(job(srv.url, tmp_path, api_key_env="M2L_TEST_KEY", model="gpt-9"))
        assert e.value.key == "engine.model"
        with pytest.raises(M2LError, match="requires an API key"):
            preflight(job(srv.url, tmp_path))
        with pytest.raises(M2LError, match="did you mean .*/v1"):
            preflight(job(srv.url.removesuffix("/v1"), tmp_path, api_key_env="M2L_TEST_KEY"))
        assert srv.requests == 0  # not a single paid request
        url = srv.url
    with pytest.raises(M2LError, match="cannot reach the OpenAI-compatible server"):
        preflight(job(url, tmp_path))


# ---------------------------------------------------------------- usage


def test_usage_summary_per_stage_language_and_cost():
    rows = pa.table({
        "language_code": ["en", "en", "sw"],
        "usage": [json.dumps({"evolve": [100, 20, 1], "answer": [300, 200, 1]}),
                  json.dumps({"evolve": [50, 10, 2]}),
                  json.dumps({"evolve": [80, 30, 1], "answer": [500, 400, 2], "user": [600, 50, 1]})],
    })
    s = OpenAISettings.from_dict({"price_per_1k_prompt_tokens": 0.5, "price_per_1k_completion_tokens": 1.5})
    u = usage_summary(rows, s)
    assert u["total"] == {"prompt_tokens": 1630, "completion_tokens": 710, "requests": 8, "cost": 1.88}
    assert u["by_stage"]["evolve"] == {"prompt_tokens": 230, "completion_tokens": 60, "requests": 4,
                                       "cost": 0.205}
    assert u["by_language"]["en"]["prompt_tokens"] == 450
    assert u["by_language"]["sw"]["completion_tokens"] == 480
    assert u["by_language_stage"]["sw"]["user"] == {"prompt_tokens": 600, "completion_tokens": 50,
                                                    "requests": 1, "cost": 0.375}
    assert u["price_per_1k"] == {"prompt": 0.5, "completion": 1.5}
    assert "cost" not in usage_summary(rows)["total"]


# ---------------------------------------------------------------- through the synthesizer


def spanish(request_id: str, body: dict[str, Any]) -> str:
    step = request_id.split(":")[1]
    if step.startswith("evolve"):
        return "Explica por qué París es la capital de Francia y cómo llegó a serlo."
    if step.startswith("user"):
        return "¿Y qué pasó después con la ciudad en el siglo diecinueve?"
    return f"París se convirtió en capital por su posición central y su poder político. ({step})"


def test_rows_through_the_synthesizer_record_failures_and_go_on(tmp_path):
    """Same conversation logic as with vLLM; a step that keeps failing fails only its row."""
    from m2l_ray.context import build_synthesizer
    from m2l_ray.plan import PlannedConversation
    from m2l_ray.taxonomy import Taxonomy

    taxonomy = Taxonomy.load()

    def planned(seed_id: str) -> PlannedConversation:
        return PlannedConversation(
            key=f"{seed_id}-0", seed_id=seed_id, evol_slot=0, language_code="es", task="question_answering",
            instruction="¿Cuál es la capital de Francia?", reference_answer="París.",
            seed_source="test",
            task_evols=tuple(e.name for e in taxonomy.evols_for("question_answering")[:2]),
            multiturn_evols=(taxonomy.multiturn_evols[0].name,), turns=2, work_unit=0,
            request_seed=int(seed_id[1:]),  # distinct requests (identical ones are sent once)
        )

    def plan(n: int, key: str, attempt: int) -> Act:
        if key == "s2-0:answer.1":  # request ids are "<item key>:<step>"
            return e500()
        return e429(0.05) if attempt == 0 and n % 2 else OK

    with FlakyServer(plan, key_header="X-Client-Request-Id", reply=spanish) as srv:
        cfg = job(srv.url, tmp_path, {"max_retries": 3, "cache": True})
        eng = OpenAIEngine(cfg)
        synth = build_synthesizer(cfg, eng)

        async def go() -> list[dict[str, Any]]:
            try:
                return await asyncio.gather(*(synth.run(planned(s)) for s in ("s0", "s1", "s2")))
            finally:
                await eng.aclose()

        rows = asyncio.run(go())
    by_seed = {r["seed_id"]: r for r in rows}
    for s in ("s0", "s1"):
        r = by_seed[s]
        assert r["status"] == "ok", r["failures"]
        assert [m["role"] for m in r["conversation"]] == ["user", "assistant"] * 2
        assert r["engine"] == "openai" and r["model"] == "test-model"
        assert r["config_hash"] == cfg.config_hash()
        assert json.loads(r["usage"]).keys() == {"evolve", "answer", "user"}
    bad = by_seed["s2"]
    assert bad["status"] == "failed" and [m["role"] for m in bad["conversation"]] == ["user"]
    assert bad["failures"][-1]["step"] == "answer.1" and bad["failures"][-1]["reason"] == "http_error"
    assert len(srv.arrivals("s2-0:answer.1")) == 4
