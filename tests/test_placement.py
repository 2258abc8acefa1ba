"""Placement and preflight: actor counts, tensor-parallel placement groups, clear refusals.

No GPU here. The pure logic is tested on resource dicts; the placement groups are
tested on a real two-node Ray cluster (ray.cluster_utils.Cluster: one raylet per
node, in separate processes) whose nodes *declare* GPUs. Ray schedules logical
resources, so the groups, their STRICT_PACK strategy, the per-node packing and the
capture of child tasks (where vLLM's Ray workers would go) are all real; only the
vLLM engine inside is not run (it needs real GPUs; see docs/cluster.md).
"""

from __future__ import annotations

import os
import pickle

import pytest

from m2l_ray.config import EngineConfig
from m2l_ray.engines.openai_settings import OpenAIEngineConfig
from m2l_ray.errors import M2LError
from m2l_ray.placement import (
    TP_STRATEGY,
    ActorPlan,
    TensorParallelGroup,
    executor_backend,
    plan_actors,
)


def eng(**kw) -> EngineConfig:
    return EngineConfig(**kw)


# ------------------------------------------------------------------ pure logic


def test_cpu_cluster_gets_one_cpu_actor_by_default():
    plan = plan_actors(eng(), {"CPU": 8})
    assert (plan.actors, plan.gpus_per_actor) == (1, 0)
    assert plan.remote_args() == {"num_cpus": 1.0}


def test_default_actor_count_is_gpus_over_tp():
    assert plan_actors(eng(), {"CPU": 64, "GPU": 8}).actors == 8
    plan = plan_actors(eng(tensor_parallel_size=4), {"CPU": 64, "GPU": 8})
    assert (plan.actors, plan.gpus_per_actor) == (2, 4)
    nodes = [{"CPU": 32, "GPU": 4}, {"CPU": 32, "GPU": 4}]
    assert plan_actors(eng(tensor_parallel_size=4), {"CPU": 64, "GPU": 8}, nodes).actors == 2


def test_default_counts_whole_groups_per_node():
    # 3 + 3 GPUs hold only two tp=2 groups, not 6 // 2 = 3
    nodes = [{"CPU": 16, "GPU": 3}, {"CPU": 16, "GPU": 3}]
    assert plan_actors(eng(tensor_parallel_size=2), {"CPU": 32, "GPU": 6}, nodes).actors == 2


def test_too_few_gpus_says_how_many_in_what_groups():
    with pytest.raises(M2LError) as e:
        plan_actors(eng(tensor_parallel_size=4, num_actors=2), {"CPU": 64, "GPU": 4})
    assert str(e.value).startswith("this job needs 8 GPUs in groups of 4; the cluster has 4")
    with pytest.raises(M2LError, match="this job needs 3 GPUs; the cluster has 2"):
        plan_actors(eng(num_actors=3), {"CPU": 64, "GPU": 2})
    with pytest.raises(M2LError, match="GPUs in groups of 2 .*the cluster has no GPU"):
        plan_actors(eng(tensor_parallel_size=2), {"CPU": 64})


def test_gpus_spread_over_nodes_cannot_host_a_tp_group():
    nodes = [{"CPU": 8, "GPU": 2}] * 4
    with pytest.raises(M2LError) as e:
        plan_actors(eng(tensor_parallel_size=4), {"CPU": 32, "GPU": 8}, nodes)
    msg = str(e.value)
    assert "GPUs in groups of 4 with each group on one node" in msg
    assert "2 + 2 + 2 + 2 per node" in msg and "hold 0 group(s)" in msg


def test_custom_resources_and_cpus_are_checked():
    with pytest.raises(M2LError, match="needs 2 of resource 'm2l_engine'.*the cluster has 1"):
        plan_actors(eng(num_actors=2, resources={"m2l_engine": 1}), {"CPU": 4, "m2l_engine": 1})
    with pytest.raises(M2LError, match="needs 3 CPUs for 3 engine actor"):
        plan_actors(eng(num_actors=3), {"CPU": 2})
    # enough in total, but both units of the resource sit on one node with one CPU
    nodes = [{"CPU": 1, "m2l_engine": 2}, {"CPU": 4}]
    with pytest.raises(M2LError, match="each on one node; the cluster's nodes hold 1"):
        plan_actors(eng(num_actors=2, resources={"m2l_engine": 1}),
                    {"CPU": 5, "m2l_engine": 2}, nodes)
    nodes = [{"CPU": 2, "m2l_engine": 1}, {"CPU": 2, "m2l_engine": 1}]
    plan = plan_actors(eng(num_actors=2, resources={"m2l_engine": 1}),
                       {"CPU": 4, "m2l_engine": 2}, nodes)
    assert plan.remote_args() == {"num_cpus": 1.0, "resources": {"m2l_engine": 1}}


def test_remote_engine_needs_no_gpu():
    plan = plan_actors(OpenAIEngineConfig(kind="openai", base_url="http://x", num_actors=3), {"CPU": 4})
    assert (plan.actors, plan.gpus_per_actor) == (3, 0)


def test_single_gpu_engine_asks_for_one_gpu_and_no_group():
    args = plan_actors(eng(), {"CPU": 8, "GPU": 2}).remote_args()
    assert args == {"num_cpus": 1.0, "num_gpus": 1}
    assert executor_backend(eng()) is None


def test_tensor_parallel_actor_gets_a_strict_pack_group_factory():
    plan = ActorPlan(2, 4, 1.0, {"m2l_engine": 1})
    args = plan.remote_args()
    assert args["num_gpus"] == 0 and args["num_cpus"] == 1.0
    assert args["resources"] == {"m2l_engine": 1}
    fn = args["ray_remote_args_fn"]
    assert isinstance(fn, TensorParallelGroup) and fn.strategy == TP_STRATEGY == "STRICT_PACK"
    bundles = [dict(b) for b in fn.bundles]
    # one bundle per tensor-parallel rank, each with one GPU (STRICT_PACK: one node)
    assert len(bundles) == plan.gpus_per_actor == 4
    assert all(b.get("GPU") == 1 for b in bundles)
    # the actor's custom resource is asked for once, in the bundle the actor itself sits in
    assert [i for i, b in enumerate(bundles) if "m2l_engine" in b] == [0]
    # what preflight checks a node against is exactly what the group reserves
    totals: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            totals[k] = totals.get(k, 0) + v
    assert plan.demand() == totals
    assert pickle.loads(pickle.dumps(fn)) == fn  # Ray Data ships it with the plan
    assert executor_backend(eng(tensor_parallel_size=4)) == "ray"


def test_vllm_engine_args_use_rays_executor_only_for_tensor_parallel():
    """What the actor hands vLLM: the Ray executor (workers in the actor's placement
    group) for tp > 1; vLLM's in-process executor otherwise. vLLM must accept both."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    from m2l_ray.engines.vllm_engine import engine_args

    tp4 = engine_args(eng(model="/models/big", tensor_parallel_size=4), seed=7)
    assert tp4["distributed_executor_backend"] == "ray" and tp4["tensor_parallel_size"] == 4
    one = engine_args(eng(model="/models/small"), seed=7)
    assert one["distributed_executor_backend"] is None and one["tensor_parallel_size"] == 1
    for args in (tp4, one):
        parsed = AsyncEngineArgs(**args)
        assert parsed.distributed_executor_backend == args["distributed_executor_backend"]


# ------------------------------------------------------------------ real Ray, declared GPUs


@pytest.fixture(scope="module")
def gpu_cluster():
    """Two nodes (separate raylets) declaring 2 GPUs each."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # another module's session fixture may hold a local instance
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "num_gpus": 2})
    cluster.add_node(num_cpus=3, num_gpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_preflight_reads_the_live_cluster(gpu_cluster):
    from m2l_ray.placement import node_resources, preflight

    nodes = node_resources()
    assert sorted(n.get("GPU", 0) for n in nodes) == [2, 2]
    assert preflight(eng(tensor_parallel_size=2)).actors == 2
    with pytest.raises(M2LError) as e:
        preflight(eng(tensor_parallel_size=4))  # 4 GPUs in total, but 2 per node
    assert "GPUs in groups of 4 with each group on one node" in str(e.value)
    with pytest.raises(M2LError, match="this job needs 8 GPUs in groups of 4; the cluster has 4"):
        preflight(eng(tensor_parallel_size=4, num_actors=2))


def test_each_actor_runs_in_its_own_strict_pack_group_on_one_node(gpu_cluster):
    """Ray Data starts two actors with the plan's remote args; each reports its group,
    and a child task (as vLLM's Ray workers are) is captured into the same group.

    Each actor registers with a collector when it is built, and no batch returns until
    both have: Ray Data may hand every block to whichever actor is up first, so counting
    actors from the rows alone would depend on dispatch timing."""
    import time

    import ray
    from ray.data import ActorPoolStrategy

    from m2l_ray.placement import preflight

    plan = preflight(eng(tensor_parallel_size=2))

    @ray.remote(num_cpus=0)
    class Collector:
        def __init__(self):
            self.infos: dict[str, dict] = {}

        def add(self, info: dict) -> None:
            self.infos[info["actor"]] = info

        def all(self) -> list[dict]:
            return list(self.infos.values())

    collector = Collector.remote()

    @ray.remote(num_cpus=0, num_gpus=1)
    def worker_probe():
        pg = ray.util.get_current_placement_group()
        return (pg.id.hex() if pg else None, ray.get_runtime_context().get_node_id())

    class Probe:
        def __init__(self, collector):
            pg = ray.util.get_current_placement_group()
            ctx = ray.get_runtime_context()
            child_pg, child_node = ray.get(worker_probe.remote())
            self.collector = collector
            self.info = {
                "pg": pg.id.hex() if pg else None,
                "node": ctx.get_node_id(),
                "child_pg": child_pg,
                "child_node": child_node,
                "actor": ctx.get_actor_id(),
            }
            ray.get(collector.add.remote(self.info))

        def __call__(self, batch):
            deadline = time.monotonic() + 120
            while len(ray.get(self.collector.all.remote())) < plan.actors:
                assert time.monotonic() < deadline, "the second actor never started"
                time.sleep(0.2)
            return {"actor": [self.info["actor"]] * len(batch["id"])}

    ds = ray.data.range(8, override_num_blocks=8).map_batches(
        Probe, batch_size=1, compute=ActorPoolStrategy(size=plan.actors),
        fn_constructor_kwargs={"collector": collector}, **plan.remote_args(),
    )
    rows = ds.take_all()
    infos = ray.get(collector.all.remote())
    assert len(infos) == 2
    assert {r["actor"] for r in rows} <= {i["actor"] for i in infos}
    pgs = {i["pg"] for i in infos}
    assert len(pgs) == 2 and None not in pgs
    for i in infos:
        assert i["child_pg"] == i["pg"] and i["child_node"] == i["node"]
    assert len({i["node"] for i in infos}) == 2  # 2 GPUs per node: one group per node
    table = ray.util.placement_group_table()
    ours = [t for pg, t in table.items() if pg in pgs]
    assert len(ours) == 2
    for t in ours:
        assert t["strategy"] == "STRICT_PACK"
        assert [b.get("GPU") for b in t["bundles"].values()] == [1.0, 1.0]
        assert t["name"].startswith("m2l-engine-tp2-")
