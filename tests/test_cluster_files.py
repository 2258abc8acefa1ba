"""The job and cluster files, checked as far as they can be without a cloud.

Parsed, not run: required fields, pinned image tags that agree with pyproject, the
entrypoint and job config they name exist, secrets only by reference, and the real
preflight (m2l_ray.placement.plan_actors) run against the nodes each cluster file
declares with the paper-scale job's engine, so the two can't drift apart.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from m2l_ray.config import load_config
from m2l_ray.context import prepare
from m2l_ray.placement import plan_actors

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
KUBERAY = sorted((REPO / "cluster/kuberay").glob("*.yaml"))
RAY_UP = sorted((REPO / "cluster/ray-up").glob("*.yaml"))
SECRETISH = re.compile(r"(SECRET|TOKEN|PASSWORD|ACCESS_KEY)", re.I)


def _pins(reqs: list[str]) -> dict[str, str]:
    out = {}
    for r in reqs:
        req = Requirement(r)
        out[req.name.lower()] = str(req.specifier)
    return out


def _pin(name: str, reqs: list[str]) -> str:
    spec = _pins(reqs)[name]
    assert spec.startswith("=="), f"{name} is not pinned in pyproject.toml: {spec}"
    return spec[2:]


RAY_PIN = _pin("ray", PYPROJECT["project"]["dependencies"])
VLLM_PIN = _pin("vllm", PYPROJECT["project"]["optional-dependencies"]["gpu"])
M2L_VERSION = PYPROJECT["project"]["version"]


def _load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _cluster_specs() -> list[tuple[str, dict]]:
    """(file, RayCluster spec) for the RayCluster and the RayJob's embedded cluster."""
    out = []
    for f in KUBERAY:
        for doc in _load_all(f):
            if doc["kind"] == "RayCluster":
                out.append((f.name, doc["spec"]))
            elif doc["kind"] == "RayJob":
                out.append((f.name, doc["spec"]["rayClusterSpec"]))
    return out


def _containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _images() -> list[tuple[str, str]]:
    out = [(f, c["image"]) for f, spec in _cluster_specs() for c in _containers(spec)]
    for f in KUBERAY:
        for doc in _load_all(f):
            if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
                for c in doc["spec"]["submitterPodTemplate"]["spec"]["containers"]:
                    out.append((f.name, c["image"]))
    for f in RAY_UP:
        out.append((f.name, yaml.safe_load(f.read_text())["docker"]["image"]))
    return out


def _dockerfile() -> str:
    return (REPO / "cluster/Dockerfile").read_text()


# ------------------------------------------------------------------ runtime env and image


def test_runtime_env_pins_match_pyproject():
    env = yaml.safe_load((REPO / "jobs/runtime_env.yaml").read_text())
    packages = env["pip"]["packages"] if isinstance(env["pip"], dict) else env["pip"]
    got = _pins(packages)
    want = _pins(PYPROJECT["project"]["dependencies"])
    want.pop("ray")  # the cluster's own Ray runs the job; never reinstalled by a runtime env
    want.update(_pins(PYPROJECT["project"]["optional-dependencies"]["gpu"]))
    assert got == want
    assert "ray" not in got


def test_local_runtime_env_installs_nothing():
    env = yaml.safe_load((REPO / "jobs/runtime_env.local.yaml").read_text())
    assert not {"pip", "uv", "conda", "container", "image_uri"} & set(env)
    assert all(isinstance(v, str) for v in env.get("env_vars", {}).values())


def test_dockerfile_is_rays_gpu_image_with_the_pinned_versions():
    text = _dockerfile()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms == [f"rayproject/ray:{RAY_PIN}-py311-gpu"]
    assert f"ARG RAY_VERSION={RAY_PIN}" in text
    assert f"ARG VLLM_VERSION={VLLM_PIN}" in text
    assert '".[gpu]"' in text  # the package with its pyproject pins
    # every path it copies exists in the repo
    for src in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", text, re.M):
        for part in src.split():
            assert (REPO / part).exists(), part


def test_image_tags_are_pinned_and_agree():
    images = _images()
    assert len(images) >= 6
    for where, image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", (where, image)
        assert f"ray{RAY_PIN}" in tag and f"vllm{VLLM_PIN}" in tag and M2L_VERSION in tag, (where, image)
    assert len({image for _, image in images}) == 1, images
    for _, spec in _cluster_specs():
        assert spec["rayVersion"] == RAY_PIN


# ------------------------------------------------------------------ KubeRay and ray up


def test_kuberay_files_have_the_required_fields():
    kinds = set()
    for f in KUBERAY:
        for doc in _load_all(f):
            kinds.add(doc["kind"])
            assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"], f.name
            if doc["kind"] == "RayJob":
                spec = doc["spec"]
                assert spec["entrypoint"] and spec["shutdownAfterJobFinishes"] is True
                assert "rayClusterSpec" in spec
    assert kinds == {"RayCluster", "RayJob"}
    for f, spec in _cluster_specs():
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert {p["containerPort"] for p in head["ports"]} >= {6379, 8265}, f
        assert spec["workerGroupSpecs"], f
        for g in spec["workerGroupSpecs"]:
            assert g["groupName"] and g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f
            c = g["template"]["spec"]["containers"][0]
            gpus = int(c["resources"]["limits"]["nvidia.com/gpu"])
            assert gpus > 0 and c["resources"]["requests"]["nvidia.com/gpu"] == str(gpus), f
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert {"/dev/shm", "/mnt/models"} <= mounts, f


def test_ray_up_file_has_the_required_fields():
    for f in RAY_UP:
        cfg = yaml.safe_load(f.read_text())
        for key in ("cluster_name", "provider", "available_node_types", "head_node_type",
                    "head_start_ray_commands", "worker_start_ray_commands", "docker"):
            assert key in cfg, (f.name, key)
        types = cfg["available_node_types"]
        assert cfg["head_node_type"] in types
        assert sum(t.get("max_workers", 0) for n, t in types.items()
                   if n != cfg["head_node_type"]) <= cfg["max_workers"]
        for t in types.values():
            assert t.get("min_workers", 0) <= t.get("max_workers", 0) or t is types[cfg["head_node_type"]]
            assert "InstanceType" in t["node_config"]
        starts = " ".join(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])
        assert starts.count("ray start") == 2 and "--head" in starts


def test_secrets_are_only_referenced_never_written():
    for _, spec in _cluster_specs():
        for c in _containers(spec):
            for e in c.get("env", []):
                if SECRETISH.search(e["name"]):
                    assert "valueFrom" in e and "value" not in e, e
            names = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert names.get("RAY_AUTH_MODE") == "token"  # token auth on real clusters
    for f in [*KUBERAY, *RAY_UP, REPO / "jobs/runtime_env.yaml", *(REPO / "jobs").glob("*.yaml")]:
        text = f.read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}", text), f  # an AWS access key id
        assert not re.search(r"aws_secret_access_key\s*[:=]\s*\S", text, re.I), f


# ------------------------------------------------------------------ entrypoints and job configs


def _image_path_to_repo(path: str) -> Path:
    """Map a path inside the image (cluster/Dockerfile) to the repo file it was copied from."""
    text = _dockerfile()
    workdir = re.findall(r"^WORKDIR\s+(\S+)", text, re.M)[-1]
    for line in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)$", text, re.M):
        *srcs, dest = line.split()
        dest = dest if dest.startswith("/") else f"{workdir}/{dest.removeprefix('./')}"
        for src in srcs:
            target = dest.rstrip("/")
            if len(srcs) > 1 or dest.endswith("/"):
                target = f"{target}/{Path(src).name}"
            if path == target or path.startswith(target + "/"):
                return REPO / src / path[len(target):].lstrip("/")
    raise AssertionError(f"{path} is not copied into the image by cluster/Dockerfile")


def test_rayjob_entrypoint_and_its_config_exist_in_the_image():
    for f in KUBERAY:
        for doc in _load_all(f):
            if doc["kind"] != "RayJob":
                continue
            argv = shlex.split(doc["spec"]["entrypoint"])
            assert argv[0] == "python"
            script = _image_path_to_repo(argv[1])
            assert script == REPO / "jobs/run.py" and script.is_file()
            config = _image_path_to_repo(argv[argv.index("--config") + 1])
            assert config.is_file()
            prepare(load_config(config))


@pytest.mark.parametrize("cluster_file", [*KUBERAY, *RAY_UP], ids=lambda p: p.name)
def test_cluster_resources_fit_the_paper_scale_job(cluster_file):
    """Run the real preflight on the nodes a cluster file declares."""
    engine = load_config(REPO / "jobs/m2lingual.yaml").engine
    nodes: list[dict[str, float]] = []
    if cluster_file.parent.name == "kuberay":
        for doc in _load_all(cluster_file):
            spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
            head = spec["headGroupSpec"]
            nodes.append({"CPU": float(head["rayStartParams"].get("num-cpus", 1))})
            for g in spec["workerGroupSpecs"]:
                lim = g["template"]["spec"]["containers"][0]["resources"]["limits"]
                node = {"CPU": float(lim["cpu"]), "GPU": float(lim["nvidia.com/gpu"])}
                nodes += [node] * g["minReplicas"]
    else:
        cfg = yaml.safe_load(cluster_file.read_text())
        for name, t in cfg["available_node_types"].items():
            count = 1 if name == cfg["head_node_type"] else t["min_workers"]
            nodes += [{k: float(v) for k, v in t["resources"].items()}] * count
    total: dict[str, float] = {}
    for n in nodes:
        for k, v in n.items():
            total[k] = total.get(k, 0) + v
    plan = plan_actors(engine, total, nodes)
    tp = engine.tensor_parallel_size
    assert tp > 1 and plan.tensor_parallel
    assert plan.actors == total["GPU"] // tp  # every GPU serves an engine, none idle
    for n in nodes:
        assert n.get("GPU", 0) % tp == 0  # whole groups per node


def test_paper_scale_job_covers_the_70_languages_and_the_full_taxonomy():
    cfg = load_config(REPO / "jobs/m2lingual.yaml")
    ctx = prepare(cfg)
    paper = {lang.code for lang in ctx.registry.paper_languages()}
    assert len(paper) == 70 and set(cfg.seeds.languages) == paper
    assert cfg.seeds.tasks is None and len(ctx.taxonomy.tasks) == 20  # 19 tasks + open_ended
    assert cfg.taxonomy.task_evols is None and cfg.taxonomy.multiturn_evols is None
    assert cfg.output.uri.startswith("s3://")
    assert cfg.engine.tensor_parallel_size == 4 and cfg.engine.num_actors is None
    ctx.curation.validate_languages(ctx.registry, cfg.seeds.languages)


def test_new_language_example_selects_its_seeds(monkeypatch):
    from m2l_ray.plan import select
    from m2l_ray.seeds.reader import read_seeds

    monkeypatch.chdir(REPO)
    cfg = load_config(REPO / "jobs/new_language.yaml")
    assert "cy" not in {lang.code for lang in prepare(load_config(REPO / "jobs/local.yaml")).registry}
    ctx = prepare(cfg)
    assert ctx.registry.resolve("cy").name == "Welsh"
    read = read_seeds(cfg.seeds, ctx.registry, set(ctx.task_ids), ctx.storage)
    assert not read.quarantine, read.quarantine
    sel = select(read.seeds, cfg.seed, cfg.seeds.per_group_cap, cfg.seeds.languages, cfg.seeds.tasks)
    langs = [s.language_code for s in sel.selected]
    assert langs.count("cy") == 6 and "en" in langs


def test_every_documented_job_command_names_files_that_exist():
    texts = {p: p.read_text() for p in [REPO / "docs/cluster.md", *(REPO / "jobs").glob("*.yaml"),
                                        *KUBERAY, *RAY_UP]}
    seen = 0
    for path, text in texts.items():
        for m in re.finditer(r"python (jobs/run\.py) --config (\S+\.ya?ml)", text):
            seen += 1
            assert (REPO / m.group(1)).is_file(), path
            assert (REPO / m.group(2)).is_file(), (path, m.group(2))
        for m in re.finditer(r"--runtime-env (\S+)", text):
            assert (REPO / m.group(1)).is_file(), (path, m.group(1))
    assert seen >= 5


def test_entrypoint_reports_a_bad_config_without_starting_ray(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("turns: {min: 4, max: 2}\n")
    proc = subprocess.run([sys.executable, "jobs/run.py", "--config", str(bad)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "config key 'turns.min'" in proc.stderr
    assert "Traceback" not in proc.stderr
