"""Weight-only int8: weights stored as int8 with one scale per output channel (per row for embedding
tables), compute in float. Weight-only int4 (Linear layers): two weights per byte, one scale per
`group_size` input channels of each output channel, ~7x smaller than fp32 with the scales.

The file shrinks ~4x while activations and arithmetic stay float32. torchao's Int8WeightOnlyConfig
ran 0.56-0.92x the speed of fp32 on this CPU (docs/quantization.md), so instead the float weight is
dequantized once, on first use, and cached (not saved): the same speed as fp32 at a quarter of the
bytes on disk; the int8 values define the weights, so accuracy is that of int8 weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelshrink.errors import UserError
from modelshrink.lineage import Transform
from modelshrink.recipe.stage_specs import WeightOnlySpec
from modelshrink.registry import register
from modelshrink.stages.base import StageContext
from modelshrink.stages.quantize.compiling import QuantizeStage
from modelshrink.stages.selection import matches_any, replace_each, select_modules

_TYPES = ("Linear", "Conv1d", "Conv2d", "Conv3d", "Embedding")


class Int8WeightOnly(nn.Module):
    """A Linear, Conv or Embedding layer whose weight is int8 x per-output-channel (per-row) scale."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.kind = type(layer).__name__
        if self.kind == "Embedding":
            self.call_args = {"padding_idx": layer.padding_idx, "max_norm": layer.max_norm}
        elif self.kind == "Linear":
            self.call_args = {}
        else:
            self.call_args = {
                "stride": layer.stride,
                "padding": layer.padding,
                "dilation": layer.dilation,
                "groups": layer.groups,
            }
        weight = layer.weight.detach()
        scale = weight.abs().flatten(1).amax(dim=1).clamp_min(1e-12) / 127.0
        view = (-1,) + (1,) * (weight.dim() - 1)
        self.register_buffer("qweight", torch.round(weight / scale.view(view)).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        bias = getattr(layer, "bias", None)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self._dequantized: torch.Tensor | None = None  # float cache, rebuilt on demand, never saved

    def weight(self) -> torch.Tensor:
        """The stored int8 weight (what `inspect` and the parameter counts see)."""
        return self.qweight

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._dequantized = None  # new int8 values: rebuild the float cache on next use

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self._dequantized is None:
            view = (-1,) + (1,) * (self.qweight.dim() - 1)
            # a normal tensor even when first built under inference_mode, so later autograd use works
            with torch.inference_mode(False), torch.no_grad():
                self._dequantized = self.qweight.float() * self.scale.view(view)
        if self.kind == "Embedding":
            return F.embedding(inputs, self._dequantized, **self.call_args)
        if self.kind == "Linear":
            return F.linear(inputs, self._dequantized, self.bias)
        conv = {"Conv1d": F.conv1d, "Conv2d": F.conv2d, "Conv3d": F.conv3d}[self.kind]
        return conv(inputs, self._dequantized, self.bias, **self.call_args)


class Int4WeightOnly(nn.Module):
    """A Linear whose weight is int4 (two per byte) x one scale per `group_size` input channels.

    Symmetric, [-8, 7] per group. Computed in float after dequantizing once, like `Int8WeightOnly`:
    torch's CPU int4 matmul (`_weight_int4pack_mm_for_cpu`) ran ~50x slower than the fp32 one on an
    AVX-512 CPU in eager mode (scripts/bench_quant.py), so the int4 values define the weights and the
    file, not the arithmetic."""

    weight_bits = 4  # what the report's per-layer bits show (the packed bytes hold two weights each)

    def __init__(self, linear: nn.Linear, group_size: int):
        super().__init__()
        self.in_features, self.out_features, self.group_size = linear.in_features, linear.out_features, group_size
        padded = -(-self.in_features // group_size) * group_size
        weight = F.pad(linear.weight.detach().float(), (0, padded - self.in_features))
        groups = weight.view(self.out_features, -1, group_size)
        scale = groups.abs().amax(dim=2).clamp_min(1e-12) / 7.0
        values = torch.round(groups / scale[..., None]).clamp(-8, 7).to(torch.int8).view(self.out_features, -1)
        nibbles = (values + 8).to(torch.uint8)
        self.register_buffer("packed", nibbles[:, 0::2] | (nibbles[:, 1::2] << 4))
        self.register_buffer("scale", scale.to(torch.float16))
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self._dequantized: torch.Tensor | None = None

    def weight(self) -> torch.Tensor:
        """The int4 values, one per weight, as int8 (what `inspect` and the parameter counts see)."""
        low, high = (self.packed & 0x0F).to(torch.int8) - 8, (self.packed >> 4).to(torch.int8) - 8
        return torch.stack([low, high], dim=2).view(self.out_features, -1)[:, : self.in_features]

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._dequantized = None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self._dequantized is None:
            with torch.inference_mode(False), torch.no_grad():
                values = self.weight().float()
                padded = F.pad(values, (0, self.scale.shape[1] * self.group_size - self.in_features))
                groups = padded.view(self.out_features, -1, self.group_size) * self.scale.float()[..., None]
                self._dequantized = groups.view(self.out_features, -1)[:, : self.in_features].contiguous()
        return F.linear(inputs, self._dequantized, self.bias)


@register(WeightOnlySpec)
class WeightOnlyQuantize(QuantizeStage):
    spec: WeightOnlySpec

    def quantize(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        spec = self.spec
        types = ("Linear",) if spec.bits == 4 else _TYPES
        names = [
            name
            for name, module in select_modules(model, ["*"], spec.exclude, types)
            if getattr(module, "padding_mode", "zeros") == "zeros"
        ]
        if not names:
            raise UserError(f"no {'/'.join(types)} layer left to quantize (exclude={spec.exclude})")
        int8 = [name for name in names if matches_any(name, spec.int8)]
        if spec.bits == 4:
            ctx.notes_for(self.name).findings.append(
                f"int4 weights (groups of {spec.group_size}) are dequantized once and computed in fp32: file "
                "size falls, speed is fp32's (torch's CPU int4 matmul is far slower in eager mode)"
                + (f"; int8 weights in {', '.join(int8)}" if int8 else "")
            )
        return ctx.transform(model, QuantizeWeightOnly(names, spec.bits, spec.group_size, int8))


@dataclass(frozen=True)
class QuantizeWeightOnly(Transform, kind="quantize_weight_only", keeps_float=False):
    """These layers hold int8 weights with per-channel scales (`Int8WeightOnly`), or int4 ones with
    group-wise scales (`Int4WeightOnly`) but for `int8_modules`, which mixed precision kept at int8."""

    modules: list[str]
    bits: int = 8  # records written before int4 existed meant int8
    group_size: int = 128
    int8_modules: list[str] = field(default_factory=list)

    def replay(self, model: nn.Module) -> nn.Module:
        int4 = [name for name in self.modules if self.bits == 4 and name not in self.int8_modules]
        replace_each(model, int4, lambda layer: Int4WeightOnly(layer, self.group_size))
        return replace_each(model, [name for name in self.modules if name not in int4], Int8WeightOnly).eval()
