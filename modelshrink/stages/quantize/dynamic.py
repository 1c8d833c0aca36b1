"""Dynamic int8: int8 weights, activations quantized on the fly (Linear/LSTM/GRU).

Backend: `torch.ao.quantization.quantize_dynamic` (fbgemm/x86 kernels). Measured on a 2-core CPU
(docs/quantization.md) it ran a Linear-heavy model 1.5-2.2x faster than fp32, while torchao's eager
int8 tensor subclasses ran 8-25x slower. torch.ao is deprecated: its use and warnings stay here.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from modelshrink.checkpoint import register_rebuilder
from modelshrink.errors import UserError
from modelshrink.recipe.schema import QuantizeSpec
from modelshrink.stages.base import StageContext
from modelshrink.stages.selection import select_modules


def quantize(model: nn.Module, spec: QuantizeSpec, ctx: StageContext) -> nn.Module:
    names = [name for name, _ in select_modules(model, ["*"], spec.exclude, spec.module_types)]
    if not names:
        raise UserError(f"no {'/'.join(spec.module_types)} layer left to quantize (exclude={spec.exclude})")
    record = {"kind": "quantize_dynamic", "modules": names, "dtype": "qint8"}
    model = quantize_modules(model, record)
    ctx.lineage.transforms.append(record)
    return model


@register_rebuilder("quantize_dynamic")
def quantize_modules(model: nn.Module, record: dict[str, Any]) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices, on every call
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model.eval(), set(record["modules"]), dtype=getattr(torch, record["dtype"]))
