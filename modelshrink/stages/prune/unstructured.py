"""Unstructured pruning (`method: unstructured`); `channel` and `block` live in channel.py and block.py.

Unstructured pruning uses torch.nn.utils.prune and is made permanent. `amount` is the target
fraction of zeros in the selected weights (already-zero weights count), so a second prune stage
with a larger amount tightens the same layers rather than compounding.
"""

from __future__ import annotations

import torch.nn.utils.prune as torch_prune
from torch import nn

from modelshrink.errors import UserError
from modelshrink.recipe.stage_specs import UnstructuredPruneSpec
from modelshrink.registry import register
from modelshrink.stages.base import Stage, StageContext
from modelshrink.stages.selection import select_modules

_METHODS = {"l1": torch_prune.L1Unstructured, "random": torch_prune.RandomUnstructured}


@register(UnstructuredPruneSpec)
class UnstructuredPrune(Stage[UnstructuredPruneSpec]):
    def apply(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        ctx.notes_for(self.name).findings.append(
            "unstructured zeros do not shrink the file or speed up dense kernels; use method: channel for speed, "
            "or compress the file for transport"
        )
        return prune_unstructured(model, self.spec)


def prune_unstructured(model: nn.Module, spec: UnstructuredPruneSpec) -> nn.Module:
    targets = [
        module
        for _, module in select_modules(model, spec.include, spec.exclude, spec.module_types)
        if isinstance(getattr(module, "weight", None), nn.Parameter)
    ]
    if not targets:
        raise UserError(
            f"no layer matches include={spec.include} exclude={spec.exclude} module_types={spec.module_types}"
        )
    method = _METHODS[spec.importance]
    if spec.scope == "global":
        torch_prune.global_unstructured([(m, "weight") for m in targets], pruning_method=method, amount=spec.amount)
    else:
        for module in targets:
            method.apply(module, "weight", amount=spec.amount)
    for module in targets:
        torch_prune.remove(module, "weight")  # fold the mask in: no weight_orig / weight_mask left
    return model
