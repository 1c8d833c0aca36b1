"""Weight-only int8: weights stored as int8 with one scale per output channel (per row for embedding
tables), compute in float.

The file shrinks ~4x while activations and arithmetic stay float32. torchao's Int8WeightOnlyConfig
ran 0.56-0.92x the speed of fp32 on this CPU (docs/quantization.md), so instead the float weight is
dequantized once, on first use, and cached (not saved): the same speed as fp32 at a quarter of the
bytes on disk; the int8 values define the weights, so accuracy is that of int8 weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelshrink.errors import UserError
from modelshrink.lineage import Transform
from modelshrink.recipe.stage_specs import WeightOnlySpec
from modelshrink.stages.base import Stage, StageContext, register
from modelshrink.stages.selection import select_modules, set_submodule

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


@register(WeightOnlySpec)
class WeightOnlyQuantize(Stage[WeightOnlySpec]):
    def apply(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        spec = self.spec
        names = [
            name
            for name, module in select_modules(model, ["*"], spec.exclude, _TYPES)
            if getattr(module, "padding_mode", "zeros") == "zeros"
        ]
        if not names:
            raise UserError(f"no Linear/Conv/Embedding layer left to quantize (exclude={spec.exclude})")
        return ctx.transform(model, QuantizeWeightOnly(names))


@dataclass(frozen=True)
class QuantizeWeightOnly(Transform, kind="quantize_weight_only"):
    """These layers hold int8 weights with per-channel scales (`Int8WeightOnly`)."""

    modules: list[str]

    def replay(self, model: nn.Module) -> nn.Module:
        for name in self.modules:
            set_submodule(model, name, Int8WeightOnly(model.get_submodule(name)))
        return model.eval()
