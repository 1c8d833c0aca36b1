"""Unstructured pruning (`method: unstructured`); `channel` and `block` live in channel.py and block.py.

Unstructured pruning uses torch.nn.utils.prune and is made permanent. `amount` is the target
fraction of zeros in the selected weights (already-zero weights count), so a second prune stage
with a larger amount tightens the same layers rather than compounding, and so can the steps of a
`schedule` (gradual.py), which prune to a rising amount with training between them.
"""

from __future__ import annotations

import torch.nn.utils.prune as torch_prune
from torch import nn

from modelshrink.errors import UserError
from modelshrink.recipe.stage_specs import UnstructuredPruneSpec
from modelshrink.registry import register
from modelshrink.sparse_storage import file_bytes
from modelshrink.stages.base import Stage, StageContext
from modelshrink.stages.prune.gradual import prune_gradually, zero_fraction
from modelshrink.stages.selection import select_modules

_METHODS = {"l1": torch_prune.L1Unstructured, "random": torch_prune.RandomUnstructured}


@register(UnstructuredPruneSpec)
class UnstructuredPrune(Stage[UnstructuredPruneSpec]):
    def apply(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        spec = self.spec
        if spec.schedule is not None:
            pruned = prune_gradually(
                model, spec.schedule, spec.amount, ctx, self.name,
                prune_to=lambda m, amount: prune_unstructured(m, spec.model_copy(update={"amount": amount})),
                sparsity=lambda m: zero_fraction(targets(m, spec)),
            )  # fmt: skip
        else:
            pruned = prune_unstructured(model, self.spec)
        ctx.notes_for(self.name).findings.append(storage_finding(targets(pruned, self.spec)))
        return pruned


def storage_finding(modules: list[nn.Module]) -> str:
    """What the zeros bought, and what they did not: dense kernels still multiply every zero."""
    speed = "dense kernels run no faster: method channel or block removes whole channels for speed"
    return f"{storage_size(modules)}; {speed}"


def storage_size(modules: list[nn.Module]) -> str:
    """How much smaller model.pt stores these modules' weights (`sparse_storage` packs sparse tensors)."""
    weights = [m.weight.detach() for m in modules]
    ratio = sum(file_bytes(w) for w in weights) / sum(w.numel() * w.element_size() for w in weights)
    if ratio >= 1:
        return "too few zeros per tensor to store the pruned weights smaller"
    return f"the pruned weights take {ratio:.2f}x of their dense bytes in model.pt (bitmask + non-zero values)"


def targets(model: nn.Module, spec: UnstructuredPruneSpec) -> list[nn.Module]:
    """The modules whose weights the spec prunes."""
    return [
        module
        for _, module in select_modules(model, spec.include, spec.exclude, spec.module_types)
        if isinstance(getattr(module, "weight", None), nn.Parameter)
    ]


def prune_unstructured(model: nn.Module, spec: UnstructuredPruneSpec) -> nn.Module:
    modules = targets(model, spec)
    if not modules:
        raise UserError(
            f"no layer matches include={spec.include} exclude={spec.exclude} module_types={spec.module_types}"
        )
    method = _METHODS[spec.importance]
    if spec.scope == "global":
        torch_prune.global_unstructured([(m, "weight") for m in modules], pruning_method=method, amount=spec.amount)
    else:
        for module in modules:
            method.apply(module, "weight", amount=spec.amount)
    for module in modules:
        torch_prune.remove(module, "weight")  # fold the mask in: no weight_orig / weight_mask left
    return model
