"""Which dtype the in-process engine runs in: float32 on CPUs without native bf16."""

from __future__ import annotations

import pytest

from m2l_ray.config import EngineConfig
from m2l_ray.engines.dtype import cpu_flags, resolve_dtype

AVX2_EPYC = {"fpu", "sse4_2", "avx", "avx2", "fma", "f16c"}
AVX512_NO_BF16 = AVX2_EPYC | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
SAPPHIRE_RAPIDS = AVX512_NO_BF16 | {"avx512_bf16", "amx_bf16", "amx_tile"}
ARM_BF16 = {"fp", "asimd", "sve", "bf16"}


@pytest.mark.parametrize("flags, want", [
    (AVX2_EPYC, "float32"), (AVX512_NO_BF16, "float32"), (set(), "float32"),
    (SAPPHIRE_RAPIDS, "bfloat16"), (ARM_BF16, "bfloat16"),
])
def test_auto_on_cpu_follows_native_bf16(flags, want):
    choice = resolve_dtype("auto", on_cpu=True, flags=flags)
    assert choice.dtype == want
    assert choice.note().startswith(f"dtype {want} (engine.dtype auto")


def test_explicit_dtype_and_gpus_are_left_alone():
    assert resolve_dtype("bfloat16", on_cpu=True, flags=AVX2_EPYC).dtype == "bfloat16"
    assert resolve_dtype("float16", on_cpu=False).dtype == "float16"
    assert resolve_dtype("auto", on_cpu=False, flags=AVX2_EPYC).dtype == "auto"  # vLLM decides


def test_flags_are_read_from_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx avx2 fma\n\n"
                   "processor\t: 1\nflags\t\t: fpu avx avx2 fma\n")
    assert cpu_flags(x86) == {"fpu", "avx", "avx2", "fma"}
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert resolve_dtype("auto", on_cpu=True, flags=cpu_flags(arm)).dtype == "bfloat16"
    assert cpu_flags(tmp_path / "missing") == set()


def test_engine_args_carry_the_resolved_dtype():
    """What vLLM receives on this machine's CPU: never 'auto' (which means bfloat16 there)."""
    from m2l_ray.engines.vllm_engine import engine_args

    args = engine_args(EngineConfig(model="/models/x"), seed=1)
    assert args["dtype"] == resolve_dtype("auto", on_cpu=True).dtype
    assert engine_args(EngineConfig(model="/models/x", dtype="bfloat16"), seed=1)["dtype"] == "bfloat16"


def test_a_small_machine_reserves_no_core_unless_the_user_chose():
    from m2l_ray.engines.cpu_threads import RESERVED_ENV, share_reserved_core

    env: dict[str, str] = {}
    assert "all 2 cores" in share_reserved_core(env, cores=2) and env == {RESERVED_ENV: "0"}
    big: dict[str, str] = {}
    assert share_reserved_core(big, cores=16) is None and big == {}
    for chosen in ({RESERVED_ENV: "1"}, {"VLLM_CPU_OMP_THREADS_BIND": "0"}):
        before = dict(chosen)
        assert share_reserved_core(chosen, cores=2) is None and chosen == before
