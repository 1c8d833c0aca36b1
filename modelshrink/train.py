"""The one training loop (finetune today; distillation and QAT pass their own loss).

Kept plain and readable in the manner of torchvision's reference `train.py`: optimizer and schedule
from the recipe, LR stepped per batch, validation accuracy logged per epoch, and pruned weights
held at zero after every optimizer step so that fine-tuning cannot undo unstructured pruning.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from modelshrink.data.bundle import DataBundle
from modelshrink.errors import UserError
from modelshrink.metrics.accuracy import evaluate_classifier
from modelshrink.progress import log, track
from modelshrink.recipe.schema import TrainingSettings

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def fit(
    model: nn.Module,
    data: DataBundle,
    spec: TrainingSettings,
    *,
    label: str,
    params: Sequence[nn.Parameter] | None = None,
    frozen_norms: Sequence[nn.Module] = (),
    loss_fn: LossFn | None = None,
    max_val_batches: int | None = None,
) -> nn.Module:
    """Train `params` (default: all that require grad) for `spec.epochs`; return the model in eval mode."""
    params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("nothing to train (every parameter is frozen)")
    steps = len(data.train) if spec.max_batches_per_epoch is None else min(len(data.train), spec.max_batches_per_epoch)
    optimizer = make_optimizer(spec, params)
    scheduler = make_scheduler(spec, optimizer, steps_per_epoch=steps)
    masks = sparsity_masks(params) if spec.keep_sparsity else []
    loss_fn = loss_fn or _cross_entropy(spec.label_smoothing)
    for epoch in range(1, spec.epochs + 1):
        start, loss_sum, seen = time.perf_counter(), 0.0, 0
        model.train()
        for module in frozen_norms:
            module.eval()
        batches = itertools.islice(data.train, steps)
        for inputs, targets in track(batches, f"{label} epoch {epoch}/{spec.epochs}", total=steps):
            loss = loss_fn(model, inputs, targets)
            if not torch.isfinite(loss):
                raise UserError(f"training diverged (loss {loss.item()} in epoch {epoch}); lower the lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                for param, mask in masks:
                    param.mul_(mask)
            loss_sum += loss.item() * targets.shape[0]
            seen += targets.shape[0]
        quality = evaluate_classifier(model, data.val, max_val_batches)
        log(
            f"{label} epoch {epoch}/{spec.epochs}: train loss {loss_sum / max(seen, 1):.4f}, "
            f"val accuracy {quality['accuracy']:.4f} ({time.perf_counter() - start:.1f}s)"
        )
    return model.eval()


def make_optimizer(spec: TrainingSettings, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
    # No weight decay on biases and norm weights (1-D tensors), as torchvision's references do.
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    groups = [
        g
        for g in ({"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0})
        if g["params"]
    ]
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, nesterov=spec.momentum > 0)
    return torch.optim.AdamW(groups, lr=spec.lr)


def make_scheduler(
    spec: TrainingSettings, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    total = max(1, spec.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler
    if spec.schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=total)
    if spec.schedule == "step":
        return sched.StepLR(optimizer, step_size=spec.step_size * steps_per_epoch, gamma=spec.gamma)
    if spec.schedule == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=spec.lr, total_steps=total)
    return sched.LambdaLR(optimizer, lambda _: 1.0)


def sparsity_masks(params: Sequence[nn.Parameter]) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Masks for weight matrices that hold exact zeros: a trained dense weight never has them,
    so they mark pruning, whether done earlier in this run or in the checkpoint we loaded."""
    masks = []
    for param in params:
        if param.dim() > 1:
            mask = param.detach() != 0
            if not bool(mask.all()):
                masks.append((param, mask.to(param.dtype)))
    return masks


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: DataBundle, batches: int) -> None:
    """Re-estimate BatchNorm running statistics on a few training batches.

    Removing channels or blocks changes what every later BatchNorm sees, while its running
    mean/variance still describe the old network; re-estimating them (no gradients, no weight
    change) recovers much of the accuracy lost before any fine-tuning."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the calibration batches
    model.train()
    for inputs, _ in itertools.islice(data.train, batches):
        model(inputs)
    for m, momentum in momenta.items():
        m.momentum = momentum
    model.eval()


def _cross_entropy(label_smoothing: float) -> LossFn:
    def loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(inputs), targets, label_smoothing=label_smoothing)

    return loss
