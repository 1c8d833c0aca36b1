"""Channel pruning: physically remove filters / neurons so the model gets faster and smaller.

Torch-Pruning's dependency graph (DepGraph) finds which layers are coupled (residual adds,
depthwise convs, concatenations, BatchNorm) and removes matching channels everywhere at once; we
call it rather than re-implement it. Our part: the recipe binding (importance, per-layer ratios,
ignored layers, rounding), the gradual schedule with optional training between steps, BatchNorm recalibration, and the
lineage record that lets the checkpoint be rebuilt. (Whether the pruned model still runs is checked
by the pipeline's next forward pass, which names the failing layer; see `modelshrink.diagnose`.)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from fnmatch import fnmatchcase

import torch.nn.functional as F
from torch import nn

from modelshrink.errors import UserError
from modelshrink.inputs import Inputs, call
from modelshrink.quiet import quiet
from modelshrink.recipe.stage_specs import ChannelPruneSpec
from modelshrink.registry import register
from modelshrink.stages.base import Stage, StageContext
from modelshrink.stages.prune import reshape
from modelshrink.stages.selection import find_classifier, matches_any, output_layers
from modelshrink.train import recalibrate_batchnorm

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def importance(name: str) -> object:
    import torch_pruning as tp

    factories: dict[str, Callable[[], object]] = {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2),
        "bn_scale": tp.importance.BNScaleImportance,
        "taylor": tp.importance.TaylorImportance,
        "random": tp.importance.RandomImportance,
    }
    return factories[name]()


@register(ChannelPruneSpec)
class ChannelPrune(Stage[ChannelPruneSpec]):
    def apply(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        return prune_channels(model, self.spec, ctx, self.name)


def prune_channels(model: nn.Module, spec: ChannelPruneSpec, ctx: StageContext, label: str) -> nn.Module:
    import torch_pruning as tp

    example = ctx.data.example_inputs(1)
    before = reshape.snapshot(model)
    params_before = sum(p.numel() for p in model.parameters())
    try:
        with quiet():  # Torch-Pruning warns about every unwrapped parameter
            pruner = tp.pruner.BasePruner(
                model,
                example,
                importance=importance(spec.importance),
                global_pruning=spec.scope == "global",
                pruning_ratio=spec.amount,
                pruning_ratio_dict=layer_ratios(model, spec.layer_amounts) or None,
                ignored_layers=ignored_layers(model, spec, example),
                round_to=spec.round_to,
                iterative_steps=spec.steps,
            )
    except UserError:
        raise
    except Exception as exc:  # tracing arbitrary models can fail in many ways; say so plainly
        raise UserError(f"cannot build the dependency graph for channel pruning: {type(exc).__name__}: {exc}") from None
    for step in range(1, spec.steps + 1):
        if spec.importance == "taylor":
            accumulate_gradients(model, ctx, spec.calibration_batches)
        try:
            pruner.step()
        except Exception as exc:
            raise UserError(f"channel pruning failed in step {step}: {type(exc).__name__}: {exc}") from None
        model.zero_grad(set_to_none=True)
        if spec.recalibrate_bn:
            recalibrate_batchnorm(model, ctx.data, spec.calibration_batches)
        if spec.finetune_between is not None and step < spec.steps:
            ctx.train(model, spec.finetune_between, label, label=f"{label} step {step}/{spec.steps}", resumable=False)
    if sum(p.numel() for p in model.parameters()) == params_before:
        raise UserError("no channel could be removed (every prunable layer is ignored or too small)")
    record = reshape.record_changes(before, model)
    if record is not None:
        ctx.lineage.transforms.append(record)
    return model.eval()


def ignored_layers(model: nn.Module, spec: ChannelPruneSpec, example: Inputs) -> list[nn.Module]:
    """The output layers (a classifier's classes, a box head's coordinates: what the user reads),
    `exclude` matches, and layers `include` leaves out."""
    try:
        ignored_names = {find_classifier(model)} | output_layers(model, example, PRUNABLE)
    except ValueError:
        raise UserError("no Conv or Linear layer to prune") from None
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE):
            continue
        if matches_any(name, spec.exclude) or not matches_any(name, spec.include):
            ignored_names.add(name)
    return [model.get_submodule(name) for name in sorted(ignored_names)]


def layer_ratios(model: nn.Module, layer_amounts: dict[str, float]) -> dict[nn.Module, float]:
    ratios: dict[nn.Module, float] = {}
    for pattern, ratio in layer_amounts.items():
        matches = [m for name, m in model.named_modules() if name and fnmatchcase(name, pattern)]
        if not matches:
            raise UserError(f"layer_amounts: {pattern!r} matches no layer")
        ratios.update(dict.fromkeys(matches, ratio))
    return ratios


def accumulate_gradients(model: nn.Module, ctx: StageContext, batches: int) -> None:
    """Taylor importance scores weights by |weight x gradient|: gradients of a few training batches."""
    model.eval()  # BatchNorm statistics must not move while we only measure
    model.zero_grad(set_to_none=True)
    if not (ctx.data.labeled and ctx.data.class_targets):
        raise UserError("importance: taylor scores by cross-entropy gradients, which needs class labels; use l1")
    for inputs, targets in itertools.islice(ctx.data.train, batches):
        F.cross_entropy(call(model, inputs), targets).backward()
