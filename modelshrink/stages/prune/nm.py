"""N:M semi-structured pruning (`method: nm`): in each group of m consecutive input weights, keep the n
largest in magnitude.

Groups run along the input dimension, as sparse tensor cores and torch.sparse.to_sparse_semi_structured
read a Linear weight (rows = outputs, groups of m along each row); a convolution's groups run along its
input channels at each kernel position (NVIDIA ASP's layout). A layer whose input width is not a
multiple of m stays dense and is named. The zeros stay zeros through later training (`keep_sparsity`),
so the pattern holds in the final model. Written here because torch.nn.utils.prune has no N:M method and
torchao's 2:4 helpers need CUDA.
"""

from __future__ import annotations

import torch
from torch import nn

from modelshrink.errors import UserError
from modelshrink.recipe.stage_specs import NMPruneSpec
from modelshrink.registry import register
from modelshrink.stages.base import Stage, StageContext
from modelshrink.stages.prune.unstructured import storage_size
from modelshrink.stages.selection import select_modules


@register(NMPruneSpec)
class NMPrune(Stage[NMPruneSpec]):
    def apply(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        pruned, dense = prune_nm(model, self.spec)
        ctx.notes_for(self.name).findings.append(_finding(self.spec, pruned, dense))
        return model


def prune_nm(model: nn.Module, spec: NMPruneSpec) -> tuple[list[nn.Module], list[str]]:
    """Zero all but the n largest of every m weights in the selected layers; returns the layers
    pruned and the names of those left dense (input width not a multiple of m)."""
    pruned, dense = [], []
    for name, module in select_modules(model, spec.include, spec.exclude, spec.module_types):
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter):
            continue
        if weight.shape[1] % spec.m:
            dense.append(name)
            continue
        with torch.no_grad():
            weight.mul_(nm_mask(weight, spec.n, spec.m))
        pruned.append(module)
    if not pruned:
        raise UserError(
            f"no layer to prune {spec.n}:{spec.m}: none matches include={spec.include} exclude={spec.exclude} "
            f"module_types={spec.module_types} with an input width that is a multiple of {spec.m}"
        )
    return pruned, dense


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """True where a weight is among the n largest magnitudes of its group of m along the input dimension."""
    inputs_last = weight.detach().movedim(1, -1)  # Linear: unchanged; conv (out, in, *k) -> (out, *k, in)
    groups = inputs_last.reshape(-1, m).abs()
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.topk(n, dim=1).indices, True)
    return keep.reshape(inputs_last.shape).movedim(-1, 1)


def _finding(spec: NMPruneSpec, pruned: list[nn.Module], dense: list[str]) -> str:
    left = f"; left dense (input width not a multiple of {spec.m}): {', '.join(dense)}" if dense else ""
    kernels = (
        "2:4 kernels exist only for NVIDIA GPUs (torch.sparse.to_sparse_semi_structured), and pay off only on "
        "large matrices: on an H200, eager PyTorch ran BERT-sized layers slower than dense (docs/performance.md)"
        if (spec.n, spec.m) == (2, 4)
        else f"no CPU or GPU kernel runs {spec.n}:{spec.m} faster"
    )
    return (
        f"{spec.n}:{spec.m} sparsity in {len(pruned)} layers{left}; on a CPU it brings only the size benefit "
        f"({storage_size(pruned)}); {kernels}"
    )
