"""Dynamic int8 with one activation scale per token (per row of the Linear's input).

torch.ao's dynamic int8 takes one activation scale per tensor, that is per batch: a text's embedding
then depends on which texts share its batch, and one outlier token coarsens every other token's
steps (measured on real queries for MiniLM, issue #12: cosine 0.964 to fp32, against 0.9988 per
token). Here each row gets its own scale, so a sample's output is the same alone or in any batch.

Hand-written because the libraries that do this run it slower than fp32 on CPU in eager mode
(torchao's Int8DynamicActivationInt8WeightConfig: 0.6-1.3x fp32 here without torch.compile), while
`torch._int_mm` (int8 x int8 -> int32, VNNI where the CPU has it) ran a 4096x384x1536 product 4.5x
faster than the fp32 one on an AVX-512 VNNI CPU. The weights are plain int8 buffers with one scale
per output channel, so checkpoints load with `weights_only`.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils import flop_counter

from modelshrink.lineage import Transform
from modelshrink.stages.selection import replace_each


def _int_mm_flops(a_shape: torch.Size, b_shape: torch.Size, *args: object, **kwargs: object) -> int:
    """torch's FLOP counter has no formula for the int8 matmul; without one MACs would miss it."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


if torch.ops.aten._int_mm not in flop_counter.flop_registry:  # a later torch may bring its own
    flop_counter.register_flop_formula(torch.ops.aten._int_mm)(_int_mm_flops)


@functools.cache
def int8_matmul_slowdown() -> float:
    """How many times longer `torch._int_mm` takes than the float32 product of the same shape on this
    CPU (best of 5 after a warm-up, one Linear-sized product, measured once per process). Where the CPU has no VNNI it
    falls back to a reference loop: 70x slower than float32 on an AVX2 AMD EPYC, where timing a per-token
    MiniLM candidate took minutes and it could never win."""
    a = torch.randint(-127, 128, (256, 384), dtype=torch.int8)
    b = torch.randint(-127, 128, (384, 384), dtype=torch.int8)
    a_float, b_float = a.float(), b.float()

    def best_of_5(product: Callable[[], torch.Tensor]) -> float:
        product()  # warm-up: first-call dispatch and allocation
        times = []
        for _ in range(5):
            start = time.perf_counter()
            product()
            times.append(time.perf_counter() - start)
        return min(times)

    with torch.inference_mode():
        try:
            int8 = best_of_5(lambda: torch._int_mm(a, b))
        except RuntimeError:  # a build without an int8 matmul for this CPU: per-token cannot run at all
            return math.inf
        return int8 / best_of_5(lambda: a_float @ b_float)


class PerTokenInt8Linear(nn.Module):
    """y = (round(x / s_row) @ int8 W^T) * s_row * s_out + b, in int32 accumulation. In eager mode the
    per-row quantization and rescaling run as separate ops; compiled, inductor fuses them into oneDNN
    int8 kernels (MiniLM at batch 32: 1.6x fp32 eager, 2.3x compiled), hence `gains_compiled`."""

    gains_compiled = True

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight_t", torch.zeros(in_features, out_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear) -> PerTokenInt8Linear:
        module = cls(linear.in_features, linear.out_features, linear.bias is not None)
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127
        module.qweight_t.copy_(torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8).t())
        module.weight_scale.copy_(scale)
        if linear.bias is not None:
            module.bias.copy_(linear.bias.detach())
        return module

    def weight(self) -> torch.Tensor:
        """The stored int8 weight, (out, in) as a Linear's (what `inspect` and parameter counts see)."""
        return self.qweight_t.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        scale = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-8).div_(127)
        quantized = (rows / scale).round_().to(torch.int8)
        out = torch._int_mm(quantized, self.qweight_t).float().mul_(scale).mul_(self.weight_scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)


@dataclass(frozen=True)
class QuantizePerToken(Transform, kind="quantize_per_token", keeps_float=False):
    """These Linear layers became `PerTokenInt8Linear` (the state_dict then fills their int8 weights)."""

    modules: list[str]

    def replay(self, model: nn.Module) -> nn.Module:
        return replace_each(model, self.modules, PerTokenInt8Linear.from_float)
