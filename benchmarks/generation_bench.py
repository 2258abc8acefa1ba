"""Pipeline generation throughput against raw vLLM offline generation of the same requests.

One run, one machine, one model:
1. the real generation stage (Ray Data actor pool, async vLLM engine, multi-turn
   conversations) on N planned seeds; a recording wrapper around the engine logs
   every request (prompt, sampling) and its completion token count;
2. shut Ray down, then raw ``vllm.LLM.generate`` on exactly those prompts, each
   forced to produce the same number of tokens (``ignore_eos``, ``max_tokens``).

Throughput is generated tokens / wall time of the generation window (first request
sent to last completion; engine start-up excluded on both sides). The offline run
has every prompt up front, with no turn-to-turn dependency: it is the ceiling.

    python benchmarks/generation_bench.py [--seeds 48] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from m2l_ray.config import load_config
from m2l_ray.engine_actor import ConversationGenerator
from m2l_ray.engines.base import Completion, StepParams

REPO = Path(__file__).resolve().parents[1]


class _Recorder:
    """Wraps an engine; appends one JSON line per request to a per-actor file."""

    def __init__(self, inner, path: str) -> None:
        self.inner = inner
        self.kind, self.model = inner.kind, inner.model
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the actor
        self.in_flight = 0

    async def chat(self, messages, params: StepParams, request_id: str) -> Completion:
        t0 = time.time()
        self.in_flight += 1
        peak = self.in_flight
        try:
            c = await self.inner.chat(messages, params, request_id)
        finally:
            self.in_flight -= 1
        self._f.write(json.dumps({
            "messages": list(messages), "max_tokens": params.max_tokens,
            "temperature": params.temperature, "top_p": params.top_p,
            "repetition_penalty": params.repetition_penalty,
            "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "t0": t0, "t1": time.time(), "in_flight": peak,
        }, ensure_ascii=False) + "\n")
        self._f.flush()
        return c

    def close(self) -> None:
        self.inner.close()


class RecordingGenerator(ConversationGenerator):
    def __init__(self, cfg, record_dir: str, counter=None) -> None:
        super().__init__(cfg, counter)
        path = os.path.join(record_dir, f"actor-{os.getpid()}.jsonl")
        self.synth.engine = _Recorder(self.engine, path)


def run_pipeline(cfg, n_seeds: int, record_dir: str) -> list[dict]:
    import ray
    from ray.data import ActorPoolStrategy

    from m2l_ray.context import prepare
    from m2l_ray.engine_actor import pool_settings
    from m2l_ray.plan import plan, select
    from m2l_ray.seeds.reader import read_seeds

    ctx = prepare(cfg)
    read = read_seeds(cfg.seeds, ctx.registry, set(ctx.task_ids))
    sel = select(read.seeds, cfg.seed, 100, None, None).selected[:n_seeds]
    planned = plan(sel, ctx.taxonomy, cfg.seed, cfg.turns.min, cfg.turns.max, 16, cfg.engine.evol_attempts,
                   cfg.evol.per_seed, cfg.evol.multiturn_share)
    s = pool_settings(cfg.engine, len(planned))
    from m2l_ray.progress import LiveCounter

    ray.init(num_cpus=2)
    counter = ray.remote(num_cpus=0)(LiveCounter).remote()  # as the job has: live tallies, 1/s
    ds = ray.data.from_items([p.to_row() for p in planned], override_num_blocks=s["num_blocks"])
    k = s["tasks_in_flight_per_actor"]
    out = ds.map_batches(
        RecordingGenerator, fn_constructor_kwargs={"cfg": cfg, "record_dir": record_dir, "counter": counter},
        batch_size=cfg.engine.batch_size, batch_format="pyarrow", num_cpus=1,
        compute=ActorPoolStrategy(size=1, max_tasks_in_flight_per_actor=k, max_concurrent_calls_per_actor=k),
    )
    rows = out.take_all()
    ray.shutdown()
    time.sleep(3)
    return rows


def run_offline(cfg, requests: list[dict]) -> float:
    """Seconds that vLLM's offline LLM.generate takes for the same prompts and token counts."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from m2l_ray.engines.cpu_threads import share_reserved_core
    from m2l_ray.engines.vllm_engine import engine_args, on_cpu

    if on_cpu():
        share_reserved_core()  # the same cores as the pipeline's engine computes on
    args = engine_args(cfg.engine, cfg.seed)
    args.pop("disable_log_stats", None)
    llm = LLM(**args)
    tok = llm.get_tokenizer()
    prompts, params = [], []
    for r in requests:
        text = tok.apply_chat_template(r["messages"], tokenize=False, add_generation_prompt=True)
        prompts.append(TokensPrompt(prompt_token_ids=tok.encode(text, add_special_tokens=False)))
        params.append(SamplingParams(
            max_tokens=max(1, r["completion_tokens"]), min_tokens=max(1, r["completion_tokens"]),
            ignore_eos=True, temperature=r["temperature"], top_p=r["top_p"],
            repetition_penalty=r["repetition_penalty"],
        ))
    llm.generate(prompts[:4], params[:4], use_tqdm=False)  # warm-up outside the timed window
    t0 = time.time()
    outs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.time() - t0
    produced = sum(len(o.outputs[0].token_ids) for o in outs)
    expected = sum(max(1, r["completion_tokens"]) for r in requests)
    assert produced == expected, (produced, expected)
    return seconds


def in_flight_profile(requests: list[dict], capacity: int) -> dict[str, float]:
    """Where the pipeline's window goes: mean requests in flight, the share of the window
    with fewer than the engine's batch (``capacity``) in flight, and the tail (from the
    last moment the batch was full to the end) as a share of the window."""
    events = sorted([(r["t0"], 1) for r in requests] + [(r["t1"], -1) for r in requests])
    start, end = events[0][0], events[-1][0]
    level, last, area, under, last_full = 0, start, 0.0, 0.0, start
    for t, d in events:
        area += level * (t - last)
        if level < capacity:
            under += t - last
        else:
            last_full = t
        level, last = level + d, t
    window = end - start
    return {
        "mean_in_flight": round(area / window, 1),
        "share_below_batch": round(under / window, 3),
        "tail_share": round((end - last_full) / window, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(REPO / "jobs/local.yaml"))
    ap.add_argument("--seeds", type=int, default=48)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--requests", metavar="DIR",
                    help="skip the pipeline: rerun the offline side on the requests recorded in DIR")
    args = ap.parse_args()
    cfg = load_config(args.config, ["seeds.languages=all", "seeds.tasks=all", *args.set])
    record_dir = args.requests or tempfile.mkdtemp(prefix="m2l-bench-")
    print(f"requests recorded in {record_dir}", flush=True)
    t = time.time()
    rows = [] if args.requests else run_pipeline(cfg, args.seeds, record_dir)
    wall = time.time() - t
    requests = [json.loads(line) for f in glob.glob(f"{record_dir}/*.jsonl") for line in open(f)]
    tokens = sum(r["completion_tokens"] for r in requests)
    window = max(r["t1"] for r in requests) - min(r["t0"] for r in requests)
    pipe_tps = tokens / window
    offline_s = run_offline(cfg, requests)
    off_tps = tokens / offline_s
    by_status = defaultdict(int)
    for r in rows:
        by_status[r["status"]] += 1
    result = {
        "conversations": len(rows),
        "status": dict(by_status),
        "requests": len(requests),
        "generated_tokens": tokens,
        "peak_requests_in_flight": max(r["in_flight"] for r in requests),
        **in_flight_profile(requests, cfg.engine.max_num_seqs),
        "pipeline_window_s": round(window, 1),
        "pipeline_wall_s_incl_startup": round(wall, 1),
        "pipeline_tok_s": round(pipe_tps, 1),
        "offline_s": round(offline_s, 1),
        "offline_tok_s": round(off_tps, 1),
        "ratio": round(pipe_tps / off_tps, 3),
        "model": cfg.engine.model,
        "enforce_eager": cfg.engine.enforce_eager,
        "max_num_seqs": cfg.engine.max_num_seqs,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
