"""fp16 / bf16: half-precision weights and compute behind a wrapper that casts float inputs and the
outputs, so the rest of the pipeline (and a user's code) keeps feeding float32 and reading float32."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from modelshrink.checkpoint import register_rebuilder
from modelshrink.recipe.stage_specs import HalfSpec
from modelshrink.stages.base import Stage, StageContext, register


class HalfPrecision(nn.Module):
    def __init__(self, model: nn.Module, dtype: str):
        super().__init__()
        self.dtype_name = dtype
        self.model = model.to(getattr(torch, dtype))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.is_floating_point():  # token ids stay integers: fp16 cannot even hold ids above 2048
            inputs = inputs.to(getattr(torch, self.dtype_name))
        return self.model(inputs).float()


@register(HalfSpec)
class HalfCast(Stage[HalfSpec]):
    def apply(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        record = {"kind": "cast", "dtype": {"fp16": "float16", "bf16": "bfloat16"}[self.spec.mode]}
        ctx.lineage.transforms.append(record)
        return wrap(model, record)


@register_rebuilder("cast")
def wrap(model: nn.Module, record: dict[str, Any]) -> nn.Module:
    return HalfPrecision(model, record["dtype"]).eval()
