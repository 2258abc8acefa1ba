"""Progress lines and the generation pool's sizing (no Ray, no engine)."""

from __future__ import annotations

import threading
import time

from m2l_ray.config import EngineConfig
from m2l_ray.generate import ASYNC_BATCHES_PER_TASK, pool_settings
from m2l_ray.progress import Progress


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_lines_at_the_interval_with_rate_and_eta():
    clock, lines = FakeClock(), []
    p = Progress("generate", 10, interval=5, emit=lines.append, clock=clock)
    clock.t += 2
    p.update(done=1, tokens=100)
    assert lines == []  # inside the interval
    clock.t += 3
    p.update(done=1, failed=1, tokens=150)
    assert lines == ["[generate] 2/10 conversations (20%), 1 failed, 50 generated tok/s, "
                     "elapsed 0m05s, ETA 0m20s"]
    p.update(force=True)
    assert len(lines) == 2


def test_heartbeat_emits_while_no_result_arrives():
    lines: list[str] = []
    p = Progress("generate", 4, interval=0.2, emit=lines.append)
    with p.heartbeat():
        time.sleep(1.1)  # a slow first block: nothing reports, the heartbeat does
    n = len(lines)
    assert 3 <= n <= 7, lines
    assert all(line.startswith("[generate] 0/4 conversations (0%)") for line in lines)
    assert lines[0].endswith("ETA ?")
    time.sleep(0.5)
    assert len(lines) == n  # the thread stopped with the block
    assert not [t for t in threading.enumerate() if t.name == "progress-generate"]


def test_heartbeat_and_results_count_once():
    lines: list[str] = []
    p = Progress("generate", 400, interval=0.05, emit=lines.append)
    with p.heartbeat():
        for _ in range(400):
            p.update(done=1, tokens=3)
    p.update(force=True)
    assert p.done == 400 and p.tokens == 1200
    assert lines[-1].startswith("[generate] 400/400 conversations (100%)")


def test_pool_gives_every_engine_its_share_of_blocks_on_a_small_job():
    cfg = EngineConfig(batch_size=4, max_num_seqs=32)
    block = 4 * ASYNC_BATCHES_PER_TASK  # 16 rows
    k = pool_settings(cfg, rows=1)["tasks_in_flight_per_actor"]
    assert k * block >= 48  # ~1.5x the engine's batch in flight
    one = pool_settings(cfg, rows=40, actors=1)
    assert (one["num_blocks"], one["block_rows"]) == (3, 14)
    # 2 engines: the local one would take all 3 blocks of 16 (its limit is k=3); cut
    # finer so that each engine gets k blocks
    two = pool_settings(cfg, rows=40, actors=2)
    assert two["num_blocks"] == 2 * k and two["block_rows"] == -(-40 // (2 * k))
    assert pool_settings(cfg, rows=4, actors=2)["num_blocks"] == 4  # never empty blocks
    big = pool_settings(cfg, rows=100 * block, actors=4)
    assert (big["num_blocks"], big["block_rows"]) == (100, block)  # large jobs: full blocks
    assert pool_settings(cfg, rows=10, engine_capacity=8)["tasks_in_flight_per_actor"] * block >= 12


def test_live_counts_move_the_line_between_blocks_and_never_the_summary():
    clock, lines = FakeClock(), []
    p = Progress("generate", 40, interval=5, emit=lines.append, clock=clock)
    live = [(0, 0, 0)]
    p.live = lambda: live[0]
    clock.t += 60
    live[0] = (10, 2, 3000)  # engines finished 10; no block has returned yet
    p.poll_live()
    p.update(force=True)
    assert lines[-1] == ("[generate] 10/40 conversations (25%), 2 failed, 50 generated tok/s, "
                         "elapsed 1m00s, ETA 3m00s")
    assert (p.done, p.failed, p.tokens) == (0, 0, 0)  # the summary's counts: returned rows
    clock.t += 60
    p.update(done=16, failed=3, tokens=4800, force=True)  # a block returned: ahead of live
    assert lines[-1].startswith("[generate] 16/40 conversations (40%), 3 failed, 40 generated tok/s")
    live[0] = (45, 0, 0)  # a retried block counted twice: never past the total
    p.poll_live()
    p.update(force=True)
    assert lines[-1].startswith("[generate] 40/40 conversations (100%)")

    def broken():
        raise TimeoutError("counter gone")

    p.live = broken
    p.poll_live()  # display only: a dead counter is skipped
    p.drop_live()
    p.update(force=True)
    assert lines[-1].startswith("[generate] 16/40 conversations (40%), 3 failed")


def test_live_counter_sums_reports():
    from m2l_ray.progress import LiveCounter

    c = LiveCounter()
    c.add(1, 0, 120)
    c.add(1, 1, 80)
    assert c.get() == (2, 1, 200)
