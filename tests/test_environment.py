"""The machine a report came from: CPU model and the ISA features that change speed and numerics."""

from __future__ import annotations

from modelshrink.environment import ISA_FEATURES, cpu_summary, environment, parse_cpuinfo

AVX2_ONLY = """processor\t: 0
model name\t: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz
flags\t\t: fpu sse sse2 avx avx2 fma bmi2
processor\t: 1
model name\t: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz
flags\t\t: fpu sse sse2 avx avx2 fma bmi2
"""
AMX = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: avx2 avx512f avx512_vnni avx_vnni avx512_bf16 avx512_fp16 amx_tile amx_int8 amx_bf16
"""


def test_cpuinfo_names_the_model_and_the_features() -> None:
    model, flags = parse_cpuinfo(AVX2_ONLY)
    assert model == "Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz"
    assert [f for f in ISA_FEATURES if f in flags] == ["avx2"]
    _, flags = parse_cpuinfo(AMX)
    assert [f for f in ISA_FEATURES if f in flags] == [f for f in ISA_FEATURES if f != "amx_fp16"]  # Granite Rapids
    assert parse_cpuinfo("") == (None, None)


def test_summary_line_shows_features_kernels_and_threads() -> None:
    env = environment()
    line = cpu_summary({**env, "cpu_model": "Test CPU", "cpu_features": ["avx2", "avx512f"]})
    assert line.startswith("Test CPU [avx2 avx512f]") and f"{env['torch_threads']} threads" in line
    assert f"({env['torch_cpu_capability']} kernels)" in line
    assert "[no AVX2]" in cpu_summary({**env, "cpu_features": []})
    assert "[features unknown]" in cpu_summary({**env, "cpu_features": None})
