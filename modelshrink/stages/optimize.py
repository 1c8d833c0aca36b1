"""The `optimize` stage: float rewrites for deployment that keep the outputs (batch norm folding,
channels_last), each kept only where it applies, and channels_last only where it measures faster."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from modelshrink.errors import first_line
from modelshrink.lineage import Transform
from modelshrink.recipe.stage_specs import OptimizeSpec
from modelshrink.registry import register
from modelshrink.stages.base import Stage, StageContext
from modelshrink.stages.fold import FoldBatchNorm, conv_bn_pairs
from modelshrink.stages.quantize import choose

CONTIGUOUS, CHANNELS_LAST = "contiguous", "channels_last"
SAME_OUTPUTS = 0.9999  # mean cosine of outputs before and after a fold, above float rounding


@dataclass(frozen=True)
class ChannelsLast(Transform, kind="channels_last"):
    """4-D weights stored channels_last (NHWC); a state_dict load keeps the layout it copies into."""

    def replay(self, model: nn.Module) -> nn.Module:
        return model.to(memory_format=torch.channels_last)


@register(OptimizeSpec)
class OptimizeStage(Stage[OptimizeSpec]):
    def apply(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        findings = ctx.notes_for(self.name).findings
        if self.spec.fold_batchnorm:
            model = self._fold(model, ctx, findings)
        has_conv2d = any(isinstance(module, nn.Conv2d) for module in model.modules())
        wanted = self.spec.channels_last
        if wanted == "auto" and has_conv2d:
            batches = list(ctx.calibration_inputs(self.spec.calibration_batches))
            candidates = {CONTIGUOUS: model, CHANNELS_LAST: ChannelsLast().replay(copy.deepcopy(model))}
            wanted = (
                choose.choose("memory format", model, candidates, batches, findings, ctx.deployed_inputs())
                == CHANNELS_LAST
            )
            ctx.notes_for(self.name).resolved["channels_last"] = wanted
        elif wanted is True and not has_conv2d:
            findings.append("channels_last left out: the model has no 2-D convolution")
            wanted = False
        return ctx.transform(model, ChannelsLast()) if wanted is True else model

    def _fold(self, model: nn.Module, ctx: StageContext, findings: list[str]) -> nn.Module:
        try:
            pairs = conv_bn_pairs(model, next(ctx.calibration_inputs(1)))
        except Exception as exc:  # torch.export refuses some code: the model stays as it is, and the report says why
            findings.append(f"batch norms not folded: torch.export cannot capture the model ({first_line(exc)[:200]})")
            return model
        norms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if not pairs:
            findings.append(f"no batch norm directly follows a convolution ({norms} batch norms left as they are)")
            return model
        fold = FoldBatchNorm([list(pair) for pair in pairs])
        # folding is exact arithmetic: outputs that moved mean a module did more than its class says
        batch = next(ctx.calibration_inputs(1))
        moved = choose.cosine(fold.replay(copy.deepcopy(model)), model, [batch])
        if moved < SAME_OUTPUTS:
            findings.append(f"batch norms not folded: folding moved the outputs (cosine {moved:.4f} to before)")
            return model
        findings.append(f"folded {len(pairs)} of {norms} batch norms into the convolutions before them")
        return ctx.transform(model, fold)
