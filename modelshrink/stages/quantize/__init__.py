"""The `quantize` stage: one mode per stage, one backend module per mode (see docs/quantization.md).

Each backend registers a rebuilder, so a quantized checkpoint reloads by replaying the same
conversion on the float architecture and then loading the saved int8 / half tensors.
"""

from __future__ import annotations

from torch import nn

from modelshrink.recipe.schema import QuantizeSpec
from modelshrink.stages.base import Stage, StageContext, register
from modelshrink.stages.quantize import dynamic, fx, half, weight_only


@register("quantize")
class QuantizeStage(Stage[QuantizeSpec]):
    def apply(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        mode = self.spec.mode
        if mode == "dynamic":
            return dynamic.quantize(model, self.spec, ctx)
        if mode in ("static", "qat"):
            return fx.quantize(model, self.spec, ctx, self.name)
        if mode == "weight_only":
            return weight_only.quantize(model, self.spec, ctx)
        return half.cast(model, mode, ctx)
