"""Gradual pruning inside one stage (`schedule:`): prune a little, train, prune more, train, ...

Sparsity follows Zhu & Gupta's cubic curve (or a line) from where the weights are to the target over
`steps` pruning steps; after each step the schedule's training stage (finetune or distill, run through
its own handler) trains for `frequency` epochs and keeps its best epoch, whose model has that step's
sparsity (pruned weights stay zero while training). The method supplies two small strategies: how to
prune to an amount, and how sparse the model is now. The curve (sparsity and tuning-split score after
each step) is a finding.

The steps' training is not resumable on its own: a resumed run starts the stage again from the model
it received, as it does for any stage that was not finished.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from torch import nn

from modelshrink.progress import log
from modelshrink.recipe.stage_specs import PruneSchedule
from modelshrink.stages.base import StageContext, apply_stage

PruneTo = Callable[[nn.Module, float], nn.Module]  # (model, fraction of zeros) -> pruned model
Sparsity = Callable[[nn.Module], float]  # the fraction of the pruned weights that are zero now


def prune_gradually(
    model: nn.Module,
    schedule: PruneSchedule,
    amount: float,
    ctx: StageContext,
    name: str,
    *,
    prune_to: PruneTo,
    sparsity: Sparsity,
) -> nn.Module:
    """Prune to `amount` in `schedule.steps` steps with training between them (see the module docstring)."""
    start = sparsity(model)
    steps_ctx = dataclasses.replace(ctx, resume_store=None)
    curve: list[str] = []
    for step in range(1, schedule.steps + 1):
        target = sparsity_at(schedule, start, amount, step)
        model = prune_to(model, target)
        epochs = min(schedule.frequency, schedule.epochs - schedule.frequency * (step - 1))
        label = f"{name} step {step}/{schedule.steps}"
        log(f"{label}: {sparsity(model):.1%} of the weights zero, training {epochs} epoch(s)")
        model = apply_stage(model, schedule.train.model_copy(update={"epochs": epochs}), steps_ctx, label)
        curve.append(f"{sparsity(model):.1%} → {_score(ctx, name, label)}")
    ctx.notes_for(name).findings.append(
        f"gradual pruning ({schedule.kind}, {schedule.steps} steps over {schedule.epochs} epochs), sparsity and "
        f"tuning-split score after each step's training: {', '.join(curve)}"
    )
    return model


def sparsity_at(schedule: PruneSchedule, start: float, end: float, step: int) -> float:
    """The fraction of zeros after `step` of `schedule.steps`: Zhu & Gupta's cubic
    s = end + (start - end) * (1 - step/steps)^3, or a straight line; the last step reaches `end`."""
    progress = step / schedule.steps
    if schedule.kind == "cubic":
        return end + (start - end) * (1 - progress) ** 3
    return start + (end - start) * progress


def zero_fraction(modules: list[nn.Module]) -> float:
    """The fraction of these modules' weights that are exactly zero."""
    weights = [m.weight.detach() for m in modules]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


def _score(ctx: StageContext, stage: str, label: str) -> str:
    """The step's kept score, its training notes moved under the pruning stage."""
    notes = ctx.notes.pop(label, None)
    if notes is None:
        return "n/a"
    mine = ctx.notes_for(stage)
    mine.training += notes.training
    mine.findings += notes.findings
    best = notes.training[-1].best if notes.training else None
    if not best:
        return "n/a"
    accuracy = best.get("accuracy")
    if accuracy is None or math.isnan(accuracy):
        return f"loss {best['loss']:.4f}"
    return f"accuracy {accuracy:.4f}"
