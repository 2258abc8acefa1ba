"""Progress, the stall watchdog and the engines' tallies (no Ray, scripted engine)."""

from __future__ import annotations

import asyncio
import time

import pyarrow as pa
import pytest
from scripted_engine import ScriptedEngine, too_long
from test_synthesis import planned, spanish, synth

from m2l_ray.config import EngineConfig
from m2l_ray.engine_actor import ASYNC_BATCHES_PER_TASK, _CountedEngine, pool_settings
from m2l_ray.errors import M2LError
from m2l_ray.languages import LanguageRegistry
from m2l_ray.plan import planned_requests
from m2l_ray.progress import EngineTally, LiveCounter, LiveSnapshot, Progress
from m2l_ray.taxonomy import Taxonomy
from m2l_ray.watchdog import watched_blocks


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def snap(requests: int = 0, tokens: int = 0, conversations: int = 0, failed: int = 0,
         plan_delta: int = 0, engines: int = 0, finished_tokens: int | None = None) -> LiveSnapshot:
    finished = tokens if finished_tokens is None else finished_tokens
    return LiveSnapshot(EngineTally(conversations, failed, requests, tokens, finished, plan_delta),
                        [{"node": "n1", "load_seconds": 20.0, "note": "dtype float32 (why)"}] * engines)


def test_no_eta_and_no_rate_before_an_engine_is_up_or_a_request_has_finished():
    clock, lines = FakeClock(), []
    p = Progress("generate", 10, 40, interval=5, emit=lines.append, clock=clock)
    clock.t += 30
    p.tick()
    assert lines[-1].startswith("[generate] loading engines: 0/1 ready, 0/10 conversations")
    assert p.eta_seconds() is None
    p.observe(snap(engines=1))  # up, but nothing finished yet
    assert lines[-1] == "[engine] 1/1 ready on n1 after 20s: dtype float32 (why)"
    clock.t += 5
    p.tick()
    assert lines[-1].endswith("ETA ?") and "0/40 requests" in lines[-1]


def test_first_finished_request_is_shown_at_once_and_eta_comes_from_tokens_left():
    clock, lines = FakeClock(), []
    p = Progress("generate", 10, 40, interval=60, emit=lines.append, clock=clock)
    clock.t += 25
    p.observe(snap(engines=1))
    ready = clock.t
    clock.t += 4
    n = len(lines)
    p.observe(snap(requests=1, tokens=80, engines=1))
    assert len(lines) == n + 1, "the first finished request must not wait for the interval"
    assert lines[-1].startswith("[generate] 1/40 requests (2%), 0/10 conversations (0 failed), 80 tokens")
    clock.t += 16  # 20 s of work since the engine was up
    # 10 requests finished with 500 tokens; 300 more have streamed for those in flight
    p.observe(snap(requests=10, tokens=800, finished_tokens=500, conversations=1, engines=1))
    rate = 800 / (clock.t - ready)
    assert p.tokens_per_second() == pytest.approx(rate)
    assert p.eta_seconds() == pytest.approx((40 * 500 / 10 - 800) / rate)
    # a conversation that needed a fallback evolution adds a request; one that failed early
    # removes the requests it will never send
    p.observe(snap(requests=12, conversations=2, plan_delta=-3, engines=1))
    assert p.requests_expected() == 40 - 3


def test_live_counts_move_the_line_but_never_past_the_plan_and_the_summary_is_exact():
    clock, lines = FakeClock(), []
    p = Progress("generate", 4, 16, interval=5, emit=lines.append, clock=clock)
    p.observe(snap(requests=8, tokens=500, conversations=2, failed=1, engines=1))
    assert (p.done, p.failed, p.requests) == (2, 1, 8)
    p.returned(conversations=3, failed=1, requests=11, tokens=700)  # a block: ahead of live
    assert (p.done, p.requests, p.tokens) == (3, 11, 700)
    p.observe(snap(requests=30, conversations=9, failed=9, engines=1))  # a retried block, twice
    assert p.done == 4 and p.failed <= p.done
    p.drop_live()
    p.observe(snap(requests=99, conversations=9, engines=1))  # ignored once dropped
    assert (p.done, p.failed, p.requests, p.tokens) == (3, 1, 11, 700)
    p.tick(force=True)
    assert lines[-1].startswith("[generate] done: 3/4 conversations (1 failed), 11 requests, 700 tokens")


def test_stall_clock_restarts_on_every_kind_of_progress():
    clock = FakeClock()
    p = Progress("generate", 4, 16, emit=lambda _: None, clock=clock)
    clock.t += 50
    assert p.stalled_seconds() == 50  # engines loading count: a hung load is a stall too
    p.observe(snap(engines=1))
    assert p.stalled_seconds() == 0
    clock.t += 10
    p.observe(snap(tokens=400, engines=1))  # tokens stream, no request finished
    assert p.stalled_seconds() == 10
    p.observe(snap(requests=1, tokens=400, engines=1))
    assert p.stalled_seconds() == 0
    clock.t += 7
    p.returned(1, 0, 4, 100)
    assert p.stalled_seconds() == 0


def test_live_counter_keeps_the_latest_tally_per_actor():
    c = LiveCounter()
    c.report("a", EngineTally(1, 0, 4, 100, 90, 0).to_dict())
    c.report("a", EngineTally(1, 0, 4, 100, 90, 0).to_dict())  # repeated: not counted twice
    c.report("b", EngineTally(2, 1, 5, 90, 80, -3).to_dict())
    c.engine_ready({"note": "x"})
    got = c.get()
    assert got["tally"] == EngineTally(3, 1, 9, 190, 170, -3).to_dict()
    assert got["engines"] == [{"note": "x"}]


# ------------------------------------------------------------------ the driver's loop


class _Stream:
    """Stands in for a Ray Data dataset: blocks after given delays (seconds)."""

    def __init__(self, delays: list[float]) -> None:
        self.delays = delays

    def iter_batches(self, **_: object):
        for i, d in enumerate(self.delays):
            time.sleep(d)
            yield pa.table({"i": [i]})


def test_watchdog_lets_a_slow_block_through_while_requests_keep_finishing():
    lines: list[str] = []
    p = Progress("generate", 1, 100, interval=0.3, emit=lines.append)
    count = {"n": 0}

    def poll() -> LiveSnapshot:
        count["n"] += 1  # a request finishes every poll (every ~0.5 s)
        return snap(requests=count["n"], engines=1)

    got = list(watched_blocks(_Stream([3.0]), p, poll, stall_seconds=1.5))
    assert [t.column("i").to_pylist() for t in got] == [[0]]
    assert any("requests" in line for line in lines)  # lines kept coming during the block


def test_watchdog_fails_a_stalled_stage_with_what_to_check():
    p = Progress("generate", 3, 12, emit=lambda _: None)
    t0 = time.monotonic()
    with pytest.raises(M2LError) as e:
        list(watched_blocks(_Stream([30.0]), p, lambda: snap(requests=2, engines=1), stall_seconds=1.0))
    assert time.monotonic() - t0 < 10
    msg = str(e.value)
    assert "[generate] stalled: no request finished (2 so far)" in msg
    assert "engine.stall_seconds=1" in msg and "a rerun of the same command resumes" in msg


def test_engine_loading_has_its_own_limit():
    p = Progress("generate", 3, 12, emit=lambda _: None)
    # no engine up yet: a stall limit of 0.5 s does not apply, the start limit (1 s) does
    with pytest.raises(M2LError, match=r"no engine came up for \ds \(engine.start_seconds=1\)"):
        list(watched_blocks(_Stream([30.0]), p, lambda: None, stall_seconds=0.5, start_seconds=1.0))
    assert p.stalled_seconds() >= 1.0


def test_reader_errors_reach_the_driver_thread():
    class Broken:
        def iter_batches(self, **_: object):
            raise RuntimeError("block failed")
            yield  # pragma: no cover

    p = Progress("generate", 1, 2, emit=lambda _: None)
    with pytest.raises(RuntimeError, match="block failed"):
        list(watched_blocks(Broken(), p, lambda: None, stall_seconds=60))
    # an error the stage knows becomes its own, with Ray Data's as the cause
    known = M2LError("[generate] explained")
    explain = lambda e: known if "block failed" in str(e) else None  # noqa: E731
    with pytest.raises(M2LError, match="explained") as e:
        list(watched_blocks(Broken(), Progress("generate", 1, 2, emit=lambda _: None), lambda: None,
                            stall_seconds=60, explain=explain))
    assert isinstance(e.value.__cause__, RuntimeError)


# ------------------------------------------------------------------ the engines' tally


def test_counted_engine_counts_every_request_and_what_a_conversation_really_needed():
    registry, taxonomy = LanguageRegistry.load(), Taxonomy.load()
    # the second turn's user message is over-long: the conversation ends early
    def reply(request_id: str, messages):
        return too_long(request_id) if request_id.endswith("user.3") else spanish(request_id, messages)

    inner = ScriptedEngine(reply)
    tally = EngineTally()
    engine = _CountedEngine(inner, tally)
    p = planned(taxonomy, turns=3)
    row = asyncio.run(synth(engine, registry, taxonomy).run(p))
    assert row["status"] == "failed"
    assert tally.requests == len(inner.requests)  # the failed request counts as finished
    made = engine.by_item.pop(p.key)
    assert made == len(inner.requests) < planned_requests(p)
    assert tally.tokens == row["completion_tokens"]


# ------------------------------------------------------------------ pool sizing


def test_pool_gives_every_engine_its_share_of_blocks_on_a_small_job():
    cfg = EngineConfig(batch_size=4, max_num_seqs=32)
    block = 4 * ASYNC_BATCHES_PER_TASK  # 16 rows
    k = pool_settings(cfg, rows=1)["tasks_in_flight_per_actor"]
    assert k * block >= 48  # ~1.5x the engine's batch in flight
    for rows, actors in [(40, 1), (40, 2), (4, 2), (100 * block, 4), (7, 3)]:
        s = pool_settings(cfg, rows=rows, actors=actors)
        assert s["block_rows"] <= block  # never blocks bigger than the async batches
        assert s["num_blocks"] <= rows  # never empty blocks
        assert s["num_blocks"] * s["block_rows"] >= rows  # every row has a block
        # small jobs: enough blocks that every engine gets its tasks in flight
        assert s["num_blocks"] >= min(rows, actors * s["tasks_in_flight_per_actor"])
    assert pool_settings(cfg, rows=100 * block, actors=4)["block_rows"] == block  # large: full
    assert pool_settings(cfg, rows=10, engine_capacity=8)["tasks_in_flight_per_actor"] * block >= 12
