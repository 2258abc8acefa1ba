"""The generation watchdog end to end: `m2l run` on real Ray against a real HTTP engine.

The engine is the ``openai`` kind talking to tests/flaky_server.py, whose answers can
be made slow or never come: that is how a slow-but-working and a stalled engine look
from the driver, without waiting minutes for vLLM on a CPU. Ray Data's own no-progress
timeout is set to 12 s in the environment, shorter than one conversation, so the slow
job would die of it if the pipeline did not switch it off for generation.
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from e2e_util import m2l, small_job, write_job
from flaky_server import Act, FlakyServer

pytestmark = pytest.mark.e2e


_WORDS = ("library", "river", "market", "garden", "bridge", "school", "harbour", "museum", "forest",
          "railway", "festival", "orchard", "theatre", "mountain", "village", "workshop")


def _sentence(key: str, body: dict) -> str:
    """A well-formed English sentence per request, with different words each time:
    passes every step's checks (not a copy, not a repeated turn, Latin script)."""
    h = hashlib.sha256(json.dumps(body["messages"]).encode()).digest()
    a, b, c, d = (_WORDS[x % len(_WORDS)] for x in h[:4])
    return (f"Describe how the {a} near the {b} changed after the {c} opened, and what the "
            f"{d} meant for the families who lived there.")


def _job(tmp_path, url: str, stall_seconds: float, openai_timeout: float):
    cfg = small_job(str(tmp_path / "out"))
    cfg["seeds"].update(languages=["en"], tasks=["question_answering", "open_ended", "summarization"])
    cfg["engine"].update(kind="openai", base_url=url, model="test-model", stall_seconds=stall_seconds,
                         openai={"timeout_seconds": openai_timeout, "max_retries": 0, "cache": False})
    return write_job(tmp_path / "job.yaml", cfg)


def test_slow_engine_survives_a_short_watchdog_and_ray_datas_timeout(tmp_path):
    # every request takes 5 s; a conversation (4 sequential requests) takes 20 s, more than
    # the stall limit (10 s, which also covers the engine actor's start) and Ray Data's
    # no-progress timeout (12 s; the curation stages after it still have it): only
    # finished requests show that the work moves
    with FlakyServer(lambda n, key, attempt: Act(delay=5.0), reply=_sentence) as srv:
        job = _job(tmp_path, srv.url, stall_seconds=10, openai_timeout=60)
        t0 = time.monotonic()
        proc = m2l("run", "--config", str(job), cwd=tmp_path, timeout=600,
                       extra_env={"RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S": "12"})
        took = time.monotonic() - t0
        served = srv.requests
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert "[done]" in proc.stdout and "stalled" not in proc.stdout + proc.stderr
    stats = json.loads((tmp_path / "out/stats.json").read_text())
    # 3 seeds, one evolution each, grown into a conversation: 3 pairs + 3 conversations
    assert stats["items_raw"] == 3 and stats["conversations_raw"] == stats["conversations_ok"] == 6
    assert served >= 12 and took > 20  # the work really was slow
    # progress counted requests as they finished, before the blocks came back
    lines = [x for x in proc.stdout.splitlines() if x.startswith("[generate]") and "requests (" in x]
    assert lines and any(" 0/3 conversations" in x and not x.startswith("[generate] 0/") for x in lines), lines


def test_stalled_engine_fails_with_a_clear_error_and_a_rerun_resumes(tmp_path):
    with FlakyServer(lambda n, key, attempt: Act(delay=300), reply=_sentence) as srv:
        job = _job(tmp_path, srv.url, stall_seconds=6, openai_timeout=600)
        t0 = time.monotonic()
        proc = m2l("run", "--config", str(job), cwd=tmp_path, timeout=300)
        took = time.monotonic() - t0
        assert srv.requests > 0  # requests were sent; none came back
    assert proc.returncode == 2, proc.stderr[-3000:] + proc.stdout[-3000:]
    err = [x for x in proc.stderr.splitlines() if x.startswith("m2l: error:")]
    assert len(err) == 1, proc.stderr[-3000:]
    assert "[generate] stalled: no request finished (0 so far)" in err[0]
    assert "engine.stall_seconds=6" in err[0] and "a rerun of the same command resumes" in err[0]
    assert "Traceback" not in proc.stderr
    assert took < 120, f"the watchdog took {took:.0f}s to fire"
    assert not (tmp_path / "out/_lock.json").exists()  # released: the rerun can start
    assert not (tmp_path / "out/manifest.json").exists()
    # the server is back (elsewhere: the address is no part of the config hash): the same
    # job, rerun, finishes the output
    with FlakyServer(reply=_sentence) as srv:
        proc = m2l("run", "--config", str(job), "--set", f"engine.base_url={srv.url}",
                   cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "out/stats.json").read_text())["items_raw"] == 3
