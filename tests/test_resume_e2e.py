"""Resume integrity through `m2l run`: a killed run's units are reused by the same config only.

Real Ray and the real ``openai`` engine against tests/flaky_server.py (slow answers, so
the kill lands mid-run); the driver is SIGKILLed with its whole process tree.

How it fails with the fault taken away: without the kill the first run finishes and the
"it must land mid-run" assertion fails; with the config unchanged the rerun is not
refused (exit 0, not 2).
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from e2e_util import kill_tree, m2l, small_job, start_m2l, wait_for, write_job
from flaky_server import Act, FlakyServer
from test_watchdog import _sentence

pytestmark = pytest.mark.e2e


def test_changed_config_never_publishes_rows_of_the_old_one(tmp_path):
    out = tmp_path / "out"
    with FlakyServer(lambda n, key, attempt: Act(delay=1.0), reply=_sentence) as srv:
        cfg = small_job(str(out))
        cfg["seeds"].update(languages=["en", "es"], tasks=["question_answering", "open_ended", "summarization"])
        cfg["engine"].update(kind="openai", base_url=srv.url, model="test-model", batch_size=1,
                             openai={"max_retries": 0, "max_in_flight": 2})
        cfg["output"].update(work_unit_size=1)
        job = write_job(tmp_path / "job.yaml", cfg)
        proc, marker = start_m2l("run", "--config", str(job), cwd=tmp_path, log=tmp_path / "first.log")
        units = lambda: sorted((out / "raw").glob("unit-*.parquet")) if (out / "raw").is_dir() else []  # noqa: E731
        wait_for(lambda: len(units()) >= 1, 240, "a first raw unit", proc)
        kill_tree(proc, marker)
        done = units()
        assert 1 <= len(done) < 6, f"{len(done)} units at the kill: it must land mid-run"
        old_hash = set(pq.read_table([str(p) for p in done]).column("config_hash").to_pylist())

        changed = ("--set", "engine.sampling.temperature=0.2")
        refused = m2l("run", "--config", str(job), *changed, cwd=tmp_path, timeout=300)
        assert refused.returncode == 2, refused.stderr[-2000:]
        err = [x for x in refused.stderr.splitlines() if x.startswith("m2l: error:")]
        assert len(err) == 1 and "engine.sampling.temperature (0.0 -> 0.2)" in err[0], refused.stderr[-2000:]
        assert "--restart" in err[0] and "new output.uri" in err[0]
        assert "[generate]" not in refused.stdout  # refused before any engine started
        assert units() == done and not (out / "manifest.json").exists()

        again = m2l("run", "--config", str(job), *changed, "--restart", cwd=tmp_path, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config_hash"] not in old_hash
    raw = pq.read_table([str(p) for p in units()])
    assert raw.num_rows == 6 and set(raw.column("config_hash").to_pylist()) == {manifest["config_hash"]}
    for name in ("seed_evol_data", "full_data"):
        rows = pq.read_table(str(out / name)).column("config_hash").to_pylist()
        assert rows and set(rows) == {manifest["config_hash"]}
