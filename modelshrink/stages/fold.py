"""Conv-BatchNorm folding: each batch norm that directly follows a convolution goes into its weights.

At inference a batch norm is an affine map per channel, so the convolution before it can absorb it
(`torch.nn.utils.fusion.fuse_conv_bn_weights`) and the batch norm becomes an `nn.Identity`: one pass
over the activations fewer. The module tree stays the user's own class, so a checkpoint rebuilds by
replaying the fold on the float architecture; the state_dict then fills the folded weights.

Which convolution feeds which batch norm is read from torch.export's graph (the parameters each
operation reads), not guessed from module order: a pair is folded only where the convolution's
output goes to that batch norm alone and each module is called once. Only PyTorch's own batch norm
classes fold: a subclass may do more in its forward (timm's `BatchNormAct2d` applies its activation),
which an Identity would drop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils.fusion import fuse_conv_bn_weights

from modelshrink.inputs import Inputs, as_args
from modelshrink.lineage import Transform
from modelshrink.quiet import quiet

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _is_norm(module: nn.Module | None) -> bool:
    return type(module) in NORMS


def conv_bn_pairs(model: nn.Module, example: Inputs) -> list[tuple[str, str]]:
    """(convolution, batch norm) module names where the batch norm takes the convolution's output
    alone. Raises whatever torch.export raises for a model it cannot capture."""
    args, kwargs = as_args(example)
    with quiet(), torch.no_grad():
        program = torch.export.export(model.eval(), args, kwargs, strict=False)
    owners = {**program.graph_signature.inputs_to_parameters, **program.graph_signature.inputs_to_buffers}
    modules = dict(model.named_modules())

    def owner(node: object, kind: Callable[[nn.Module | None], bool]) -> str | None:
        """The module `kind` accepts whose parameter or buffer `node` is, if only one operation reads it."""
        name = owners.get(getattr(node, "name", ""), "").rpartition(".")[0]
        return name if kind(modules.get(name)) and len(node.users) == 1 else None  # type: ignore[attr-defined]

    pairs = []
    for node in program.graph.nodes:
        if node.op != "call_function" or "conv" not in str(node.target) or len(node.args) < 2:
            continue
        conv = owner(node.args[1], lambda module: isinstance(module, _ConvNd))
        [user] = node.users if len(node.users) == 1 else [None]
        if conv is None or user is None or "batch_norm" not in str(user.target):
            continue
        norm = next((owner(arg, _is_norm) for arg in user.args[1:] if owner(arg, _is_norm)), None)
        if norm is not None and not modules[conv].transposed and modules[norm].running_mean is not None:
            pairs.append((conv, norm))
    return pairs


@dataclass(frozen=True)
class FoldBatchNorm(Transform, kind="fold_batchnorm"):
    """Each (convolution, batch norm) pair folded: the convolution takes the batch norm's scale and
    shift into its weight and bias (gaining a bias if it had none); the batch norm becomes Identity."""

    pairs: list[list[str]]  # [convolution, batch norm] module names

    def replay(self, model: nn.Module) -> nn.Module:
        for conv_name, norm_name in self.pairs:
            conv, norm = model.get_submodule(conv_name), model.get_submodule(norm_name)
            conv.weight, conv.bias = fuse_conv_bn_weights(
                conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
            )
            parent, _, attribute = norm_name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attribute, nn.Identity())
        return model
