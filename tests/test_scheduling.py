"""Request priorities: the longest dependent chain runs first (critical path first).

The synthesis gives each request priority = -(requests its conversation still needs
after it); vLLM runs lower values first. Checked on the scripted engine (what the
synthesis sends) and on vLLM's own priority queue (what the engine does with it).
"""

from __future__ import annotations

import asyncio

import pytest
from scripted_engine import ScriptedEngine
from test_synthesis import planned, spanish, synth

from m2l_ray.plan import planned_requests
from m2l_ray.synthesis import requests_after


@pytest.mark.parametrize("turns", [1, 2, 3])
def test_priorities_count_down_the_requests_still_needed(registry, taxonomy, turns):
    eng = ScriptedEngine(spanish)
    row = asyncio.run(synth(eng, registry, taxonomy).run(planned(taxonomy, turns=turns)))
    assert row["status"] == "ok", row["failures"]
    sent = [(rid.split(":")[1], params.priority) for rid, _, params in eng.requests]
    assert len(sent) == planned_requests(planned(taxonomy, turns=turns)) == 2 * turns
    # each request has one fewer behind it than the one before; the last has none
    assert [prio for _, prio in sent] == [-(2 * turns - 1 - i) for i in range(2 * turns)]


def test_a_fallback_evolution_keeps_the_whole_chain_ahead(taxonomy):
    p = planned(taxonomy, turns=3)
    assert requests_after(p, "evolve.0") == requests_after(p, "evolve.1") == 5
    assert requests_after(p, "answer.1") == 4
    assert requests_after(p, "user.3") == 1 and requests_after(p, "answer.3") == 0


def test_vllm_priority_queue_serves_the_longest_chain_first():
    """vLLM's own scheduler queue and Request (the installed version) pop the lowest
    priority value first, then arrival order: the convention the synthesis relies on."""
    from vllm import SamplingParams
    from vllm.v1.core.sched.request_queue import SchedulingPolicy, create_request_queue
    from vllm.v1.request import Request

    q = create_request_queue(SchedulingPolicy.PRIORITY)
    for name, prio, arrival in (("last answer", 0, 1.0), ("turn 2 of 3", -3, 2.0), ("new pair", -1, 3.0),
                                ("new 3-turn item", -5, 4.0), ("other last answer", 0, 0.5)):
        q.add_request(Request(name, [1, 2, 3], SamplingParams(max_tokens=4), None,
                              arrival_time=arrival, priority=prio))
    order = [q.pop_request().request_id for _ in range(5)]
    assert order == ["new 3-turn item", "turn 2 of 3", "new pair", "other last answer", "last answer"]


def test_vllm_engine_asks_for_priority_scheduling():
    from vllm.engine.arg_utils import AsyncEngineArgs

    from m2l_ray.config import EngineConfig
    from m2l_ray.engines.dtype import DtypeChoice
    from m2l_ray.engines.vllm_engine import engine_args

    args = engine_args(EngineConfig(model="/models/x"), seed=1, dtype=DtypeChoice("float32", "test"))
    assert args["scheduling_policy"] == "priority"
    assert AsyncEngineArgs(**args).scheduling_policy == "priority"  # a name vLLM knows
