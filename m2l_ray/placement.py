"""Where engine actors go: actor count, per-actor resources, placement groups, preflight.

Why this module exists:

* A job that can't fit must fail before it starts, with one sentence that says what
  it needs and what the cluster has ("this job needs 8 GPUs in groups of 4; the
  cluster has 4"), instead of actors pending forever while the driver waits.
  ``preflight`` checks the live cluster's nodes; ``plan_actors`` is the pure logic,
  so it is tested without a cluster or a GPU.
* Tensor parallelism: a vLLM engine with ``tensor_parallel_size`` tp > 1 runs tp
  worker processes, one per GPU, that talk over NVLink/PCIe, so its GPUs must sit
  on one node. Each engine actor therefore gets its own STRICT_PACK placement group
  of tp ``{GPU: 1, CPU: 1}`` bundles, created when Ray Data starts the actor
  (``ray_remote_args_fn``), and captures child tasks so that vLLM's Ray executor
  puts its workers in that group. The actor itself holds no GPU (Ray Data LLM does
  the same); it sits in bundle 0 with the job's custom resources.
* Placement is counted per node, not only in total: 8 GPUs as 4 nodes x 2 can't
  host one tp=4 engine. The default actor count is GPUs / tp, or fewer when the
  GPUs are spread so that fewer whole groups fit.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from m2l_ray.config import EngineConfig
from m2l_ray.engines.registry import engine_spec
from m2l_ray.errors import M2LError

log = logging.getLogger(__name__)

#: The placement strategy of one engine's tensor-parallel GPUs: all on one node.
TP_STRATEGY = "STRICT_PACK"


@dataclass(frozen=True)
class TensorParallelGroup:
    """``ray_remote_args_fn`` for ``map_batches``: a fresh placement group per actor.

    Ray Data calls it each time it starts an engine actor, so every actor (and every
    restart of the pool) gets its own group. Kept a module-level frozen dataclass so
    that it pickles by reference and compares by value in tests.
    """

    bundles: tuple[Mapping[str, float], ...]
    strategy: str = TP_STRATEGY

    def __call__(self) -> dict[str, Any]:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        pg = ray.util.placement_group(
            [dict(b) for b in self.bundles],
            strategy=self.strategy,
            name=f"m2l-engine-tp{self.gpus}-{uuid.uuid4().hex[:8]}",
        )
        return {
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=pg,
                placement_group_bundle_index=0,  # the actor's CPU and custom resources
                placement_group_capture_child_tasks=True,  # vLLM's Ray workers land in it
            )
        }

    @property
    def gpus(self) -> int:
        return int(sum(b.get("GPU", 0) for b in self.bundles))


@dataclass(frozen=True)
class ActorPlan:
    actors: int
    gpus_per_actor: int  # = tensor_parallel_size on GPU clusters, 0 on CPU
    cpus_per_actor: float
    resources: Mapping[str, float] = field(default_factory=dict)

    @property
    def tensor_parallel(self) -> bool:
        """More than one GPU per engine: a placement group per actor, Ray executor in vLLM."""
        return self.gpus_per_actor > 1

    def bundles(self) -> list[dict[str, float]]:
        """The placement group of one tensor-parallel engine (bundle 0 hosts the actor)."""
        out = [{"GPU": 1.0, "CPU": 1.0} for _ in range(self.gpus_per_actor)]
        if out:
            out[0].update({k: float(v) for k, v in self.resources.items()})
        return out

    def demand(self) -> dict[str, float]:
        """What one engine needs on a single node (a STRICT_PACK group, or one actor)."""
        if self.tensor_parallel:
            total: dict[str, float] = {}
            for b in self.bundles():
                for k, v in b.items():
                    total[k] = total.get(k, 0.0) + v
            return total
        d = {"CPU": float(self.cpus_per_actor), **{k: float(v) for k, v in self.resources.items()}}
        if self.gpus_per_actor:
            d["GPU"] = float(self.gpus_per_actor)
        return d

    def remote_args(self) -> dict[str, Any]:
        """Keyword arguments for ``map_batches``: resources, or a placement group factory.

        With tp > 1 the actor asks for no GPU itself; the GPUs are reserved by its
        placement group and used by vLLM's Ray workers inside it.
        """
        args: dict[str, Any] = {"num_cpus": self.cpus_per_actor}
        if self.tensor_parallel:
            args["num_gpus"] = 0
            args["ray_remote_args_fn"] = TensorParallelGroup(
                tuple(self.bundles()), TP_STRATEGY
            )
        elif self.gpus_per_actor:
            args["num_gpus"] = self.gpus_per_actor
        if self.resources:
            args["resources"] = dict(self.resources)
        return args

    def describe(self) -> str:
        if self.tensor_parallel:
            return (f"{self.actors} engine actor(s), each a {TP_STRATEGY} placement group of "
                    f"{self.gpus_per_actor} GPUs")
        what = f"{self.gpus_per_actor} GPU" if self.gpus_per_actor else f"{self.cpus_per_actor:g} CPU"
        return f"{self.actors} engine actor(s) with {what} each"


def executor_backend(cfg: EngineConfig) -> str | None:
    """vLLM's ``distributed_executor_backend``: Ray workers inside the actor's placement
    group when tp > 1; None (vLLM's in-process default) otherwise."""
    return "ray" if cfg.tensor_parallel_size > 1 else None


def _fits(node: Mapping[str, float], demand: Mapping[str, float]) -> int:
    """How many engines with ``demand`` fit on one node."""
    n = math.inf
    for k, v in demand.items():
        if v > 0:
            n = min(n, math.floor(node.get(k, 0.0) / v + 1e-9))
    return 0 if n == math.inf else int(n)


def _fmt(d: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(d.items())) + "}"


def plan_actors(
    cfg: EngineConfig,
    cluster: Mapping[str, float],
    nodes: Sequence[Mapping[str, float]] | None = None,
) -> ActorPlan:
    """Actor count and resources; raises M2LError when the cluster can't host them.

    ``cluster`` is the total (``ray.cluster_resources()``); ``nodes`` the per-node
    totals of the alive nodes (``node_resources()``). Without ``nodes`` only totals
    are checked, as if the cluster were one node.
    """
    tp = cfg.tensor_parallel_size
    gpus = int(cluster.get("GPU", 0))
    remote = engine_spec(cfg.kind).remote  # a remote server does the GPU work; actors only need a CPU
    if remote or (gpus == 0 and tp == 1):
        plan = ActorPlan(cfg.num_actors or 1, 0, 1.0, dict(cfg.resources))
    else:
        if gpus == 0:
            raise M2LError(
                f"this job needs GPUs in groups of {tp} (engine.tensor_parallel_size {tp}); "
                "the cluster has no GPU"
            )
        probe = ActorPlan(1, tp, 1.0, dict(cfg.resources))
        fit = sum(_fits(n, probe.demand()) for n in nodes) if nodes is not None else gpus // tp
        n = cfg.num_actors or max(1, fit)
        if n * tp > gpus:
            unit = f"GPUs in groups of {tp}" if tp > 1 else "GPUs"
            raise M2LError(
                f"this job needs {n * tp} {unit}; the cluster has {gpus} "
                f"({n} engine actor(s) x engine.tensor_parallel_size {tp}: set "
                "engine.num_actors lower or add GPU nodes)"
            )
        plan = ActorPlan(n, tp, 1.0, dict(cfg.resources))
    for name, per_actor in plan.resources.items():
        have = cluster.get(name, 0)
        if have < per_actor * plan.actors:
            raise M2LError(
                f"this job needs {per_actor * plan.actors:g} of resource '{name}' "
                f"({plan.actors} engine actor(s) x {per_actor:g}, engine.resources); "
                f"the cluster has {have:g}"
            )
    cpus = cluster.get("CPU", 0)
    need_cpus = plan.demand().get("CPU", 0) * plan.actors
    if need_cpus and cpus < need_cpus:
        raise M2LError(
            f"this job needs {need_cpus:g} CPUs for {plan.actors} engine actor(s); "
            f"the cluster has {cpus:g}"
        )
    if nodes is not None:
        demand = plan.demand()
        fit = sum(_fits(nd, demand) for nd in nodes)
        if fit < plan.actors and plan.tensor_parallel:
            per_node = " + ".join(f"{nd.get('GPU', 0):g}" for nd in nodes if nd.get("GPU"))
            raise M2LError(
                f"this job needs {plan.actors * tp} GPUs in groups of {tp} with each group on "
                f"one node (tensor parallelism, {TP_STRATEGY}); the cluster has {gpus} GPUs as "
                f"{per_node} per node, which hold {fit} group(s) of {_fmt(demand)}"
            )
        if fit < plan.actors:
            raise M2LError(
                f"this job needs {plan.actors} engine actor(s) of {_fmt(demand)} each on one "
                f"node; the cluster's nodes hold {fit} (nodes: "
                + "; ".join(_fmt({k: nd.get(k, 0.0) for k in demand}) for nd in nodes) + ")"
            )
    return plan


def node_resources() -> list[dict[str, float]]:
    """Total resources of each alive node of the connected Ray cluster."""
    import ray

    return [
        {k: float(v) for k, v in n.get("Resources", {}).items() if not k.startswith("node:")}
        for n in ray.nodes()
        if n.get("Alive")
    ]


def preflight(cfg: EngineConfig) -> ActorPlan:
    """Check the connected cluster against the engine config; the plan, or M2LError."""
    import ray

    plan = plan_actors(cfg, ray.cluster_resources(), node_resources())
    log.info("placement: %s", plan.describe())
    return plan
