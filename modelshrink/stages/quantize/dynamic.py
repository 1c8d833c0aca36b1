"""Dynamic int8: int8 weights, activations quantized on the fly (Linear/LSTM/GRU), int8 embedding tables.

Backend: `torch.ao.quantization.quantize_dynamic` (fbgemm/x86 kernels). Measured on a 2-core CPU
(docs/quantization.md) it ran a Linear-heavy model 1.5-2.2x faster than fp32, while torchao's int8
tensor subclasses ran 8-25x slower in eager mode and ~20x slower under torch.compile. torch.ao is
deprecated: its use and its warnings stay in this module.

Activations stay at torch.ao's 7 bits (`reduce_range=True`): with all 8 bits, fbgemm's int16 pair
sums saturate on CPUs without VNNI (measured here: max output error 0.19 vs 0.006 on a small model).
`ContiguousEmbedding` fills a gap no library fills: the int8 embedding kernel rejects strided index
tensors that the float table accepts (e.g. Hugging Face's expanded `token_type_ids` buffer).
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

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torch.ao's deprecation notices
    import torch.ao.nn.quantized as nnq
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        float_qparams_weight_only_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )


class ContiguousEmbedding(nnq.Embedding):
    """An int8 embedding table that accepts strided indices, as the float one does."""

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return super().forward(indices.contiguous())


def quantize(model: nn.Module, spec: QuantizeSpec, ctx: StageContext) -> nn.Module:
    selected = select_modules(model, ["*"], spec.exclude, spec.module_types)
    if not selected:
        raise UserError(f"no {'/'.join(spec.module_types)} layer left to quantize (exclude={spec.exclude})")
    record = {
        "kind": "quantize_dynamic",
        "modules": [name for name, _ in selected],
        "dtype": "qint8",
        "per_channel": spec.per_channel,
    }
    model = quantize_modules(model, record)
    ctx.lineage.transforms.append(record)
    return model


@register_rebuilder("quantize_dynamic")
def quantize_modules(model: nn.Module, record: dict[str, Any]) -> nn.Module:
    # Records written before per_channel existed meant per-tensor weights.
    linear_qconfig = per_channel_dynamic_qconfig if record.get("per_channel") else default_dynamic_qconfig
    modules = dict(model.named_modules())
    qconfigs = {}
    for name in record["modules"]:
        if isinstance(modules[name], nn.Embedding):
            qconfigs[name] = float_qparams_weight_only_qconfig
        elif isinstance(modules[name], nn.Linear):
            qconfigs[name] = linear_qconfig
        else:
            qconfigs[name] = default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = quantize_dynamic(model.eval(), qconfigs, dtype=getattr(torch, record["dtype"]))
    for module in model.modules():
        if type(module) is nnq.Embedding:
            module.__class__ = ContiguousEmbedding
    return model
