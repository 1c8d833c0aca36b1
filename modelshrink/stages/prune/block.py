"""Block (layer) pruning: replace whole shape-preserving blocks by identity, least important first.

A block can go when its output has exactly its input's shape (residual blocks without a projection,
e.g. ResNet's non-downsampling bottlenecks, MobileNet/EfficientNet inverted residuals with skips):
the rest of the network then sees tensors of the shapes it expects. Importance is measured, not
guessed: how much the model's logits change on a few training batches when the block is skipped.
No library does this for arbitrary nn.Modules, hence this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modelshrink.errors import UserError
from modelshrink.hooks import forward_hooks
from modelshrink.inputs import call, output_matrix
from modelshrink.lineage import Transform
from modelshrink.recipe.stage_specs import BlockPruneSpec
from modelshrink.registry import register
from modelshrink.stages.base import Stage, StageContext
from modelshrink.stages.selection import matches_any, sequential_blocks, set_submodule
from modelshrink.train import recalibrate_batchnorm


@register(BlockPruneSpec)
class BlockPrune(Stage[BlockPruneSpec]):
    def apply(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        return drop_blocks(model, self.spec, ctx)


def drop_blocks(model: nn.Module, spec: BlockPruneSpec, ctx: StageContext) -> nn.Module:
    candidates = [
        name for name in removable_blocks(model, ctx.data.example_inputs(2)) if not matches_any(name, spec.exclude)
    ]
    if not candidates:
        raise UserError("no block can be removed without changing tensor shapes (or all are excluded)")
    count = max(1, round(spec.amount * len(candidates)))
    batches = list(ctx.calibration_inputs(spec.calibration_batches))
    scores = block_scores(model, candidates, batches, spec.importance, ctx.seed)
    dropped = sorted(candidates, key=scores.__getitem__)[:count]
    model = ctx.transform(model, DropBlocks(dropped, {n: scores[n] for n in candidates}))
    if spec.recalibrate_bn:
        recalibrate_batchnorm(model, ctx.data, spec.calibration_batches)
    return model.eval()


def removable_blocks(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Non-leaf children of an nn.Sequential whose single tensor output has its input's shape."""
    shapes: dict[str, tuple[Any, Any]] = {}

    def recorder(name: str) -> Any:
        def record(module: nn.Module, args: tuple, output: Any) -> None:
            inp = args[0] if len(args) == 1 and isinstance(args[0], torch.Tensor) else None
            out = output if isinstance(output, torch.Tensor) else None
            shapes[name] = (None if inp is None else inp.shape, None if out is None else out.shape)

        return record

    with forward_hooks((child, recorder(name)) for name, child in sequential_blocks(model)), torch.inference_mode():
        call(model.eval(), example)
    return [name for name, (inp, out) in shapes.items() if inp is not None and inp == out]


@torch.inference_mode()
def block_scores(
    model: nn.Module, names: list[str], batches: list[torch.Tensor], importance: str, seed: int
) -> dict[str, float]:
    """Relative change of the logits when each block alone is skipped (higher = more important)."""
    if importance == "random":
        generator = torch.Generator().manual_seed(seed)
        return {name: float(torch.rand(1, generator=generator)) for name in names}
    model.eval()
    reference = [output_matrix(call(model, x)) for x in batches]
    scores = {}
    for name in names:
        block = model.get_submodule(name)
        set_submodule(model, name, nn.Identity())
        try:
            change = sum(
                float((output_matrix(call(model, x)) - ref).norm() / ref.norm().clamp_min(1e-12))
                for x, ref in zip(batches, reference, strict=True)
            )
        finally:
            set_submodule(model, name, block)
        scores[name] = change / max(len(batches), 1)
    return scores


@dataclass(frozen=True)
class DropBlocks(Transform, kind="drop_blocks"):
    """These blocks became identities; `scores` keeps every candidate's measured importance."""

    modules: list[str]
    scores: dict[str, float]

    def replay(self, model: nn.Module) -> nn.Module:
        for name in self.modules:
            set_submodule(model, name, nn.Identity())
        return model
