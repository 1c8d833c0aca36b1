"""What about this machine changes speed and numerics, so a reader can tell which machine gave a number.

Float results and speed-ups differ between CPUs: AVX-512 and AVX2 kernels reduce in other orders, and
int8 (VNNI, AMX) and bf16 (AVX512_BF16, AMX) pay off only where the instructions exist. Read from
/proc/cpuinfo on Linux (no library reports these flags portably); elsewhere the features are unknown.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# The instruction sets that decide fp32, int8 and bf16 speed on x86, in the names /proc/cpuinfo uses.
ISA_FEATURES = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "amx_fp16",
)
# What makes a half-precision mode pay off on a CPU: native arithmetic in that format.
HALF_PRECISION_ISA = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}


def environment() -> dict[str, Any]:
    import torch

    model, flags = _cpuinfo()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": model,
        "cpu_features": [f for f in ISA_FEATURES if f in flags] if flags is not None else None,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def has_cpu_feature(name: str) -> bool:
    """Whether /proc/cpuinfo lists `name` (e.g. amx_int8); False where the features are unknown."""
    return name in (_cpuinfo()[1] or ())


def usable_cores() -> int:
    """The cores this process may run on (a container's or `taskset`'s share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_summary(env: dict[str, Any] | None = None) -> str:
    """One line: CPU model, ISA features, the kernels torch chose, torch version and threads."""
    env = env or environment()
    features = env.get("cpu_features")
    shown = "features unknown" if features is None else " ".join(features) or "no AVX2"
    return (
        f"{env.get('cpu_model') or 'unknown CPU'} [{shown}] · torch {env['torch']} "
        f"({env.get('torch_cpu_capability', '?')} kernels) · {env['torch_threads']} threads"
    )


def _cpuinfo() -> tuple[str | None, set[str] | None]:
    try:
        model, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        model, flags = None, None
    return model or platform.processor() or None, flags


def parse_cpuinfo(text: str) -> tuple[str | None, set[str] | None]:
    """The first CPU's model name and feature flags from /proc/cpuinfo's text."""
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and flags is None:
            flags = set(value.split())
    return model, flags
