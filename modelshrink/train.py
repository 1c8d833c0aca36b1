"""The one training loop, used by finetune, distill and between pruning steps.

Kept plain in the manner of torchvision's reference `train.py`: optimizer and schedule from the
recipe (discriminative learning rates by layer glob), LR stepped per batch, accuracy per epoch on the
tuning split held out of training (early stopping, keep-best), pruned weights held at zero after every
optimizer step, DDP when run in several processes, and a resumable state after every epoch.

With `keep_best` (the default) the starting weights are scored too, as epoch 0, so a stage that only
trains never hands on a model that scores worse than the one it received: one epoch of AdamW at a
learning rate far above where the model's own training ended can lose points on a small data set
(measured: 3.3 points on the digits ResNet-50 on an AVX-512 CPU, and anywhere from 0 to 3.3 with the
data order), and recovery must not depend on that luck.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from modelshrink import distributed
from modelshrink.data.bundle import DataBundle
from modelshrink.errors import UserError
from modelshrink.inputs import Inputs, batch_size, call
from modelshrink.metrics.accuracy import evaluate_classifier
from modelshrink.progress import log, track
from modelshrink.recipe.stage_specs import TrainingSettings
from modelshrink.user_code import resolve, run_user_code

LossFn = Callable[[nn.Module, Inputs, Any], torch.Tensor]  # (model, inputs, targets) -> loss
OutputLoss = Callable[[Any, Any], torch.Tensor]  # (outputs, targets) -> loss
EpochHook = Callable[[dict[str, Any]], None]
NamedParams = Sequence[tuple[str, nn.Parameter]]


@dataclass
class FitResult:
    """The trained model (eval mode) and how the epochs went, scored on the selection split."""

    model: nn.Module
    kept_epoch: int  # the epoch whose weights the model ends with; 0: the starting weights, kept
    epochs_run: int
    start: dict[str, float] | None  # epoch 0's score; None when the loop does not choose epochs
    best: dict[str, float] | None


@dataclass
class EpochState:
    """What the loop carries from epoch to epoch; with the model, optimizer, scheduler and random
    generators it is the resumable state `on_epoch` receives after each epoch."""

    epoch: int = 0  # the last epoch run (0: none yet)
    best: dict[str, Any] | None = None  # the best score so far, its epoch and (keep_best) its weights
    start: dict[str, float] | None = None  # epoch 0's score, when epochs are chosen
    stale: int = 0  # epochs since the best one


def fit(
    model: nn.Module,
    data: DataBundle,
    spec: TrainingSettings,
    *,
    label: str,
    params: NamedParams | None = None,
    extra_params: Sequence[nn.Parameter] = (),
    frozen_norms: Sequence[nn.Module] = (),
    loss_fn: LossFn | None = None,
    max_val_batches: int | None = None,
    resume: dict[str, Any] | None = None,
    on_epoch: EpochHook | None = None,
    on_score: Callable[[dict[str, float]], None] | None = None,
) -> FitResult:
    """Train `params` (default: all that require grad) for `spec.epochs`; the model ends in eval mode.

    Epochs are scored on `data.tune` (held out of training) when there is one, else on `data.val`.
    `extra_params` train alongside but belong to the loss (e.g. distillation projections).
    `on_epoch` receives a resumable state after each epoch; pass it back as `resume` to continue.
    `on_score` receives each epoch's score (tune's pruner; it may raise to stop the candidate)."""
    params = list(params) if params is not None else [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise UserError("nothing to train (every parameter is frozen)")
    steps = len(distributed.shard(data.train))
    if spec.max_batches_per_epoch is not None:
        steps = min(steps, spec.max_batches_per_epoch)
    optimizer = make_optimizer(spec, params, extra_params)
    scheduler = make_scheduler(spec, optimizer, steps_per_epoch=steps)
    masks = sparsity_masks([p for _, p in params]) if spec.keep_sparsity else []
    loss_fn = loss_fn or on_model(task_loss(spec, data))
    trainer: nn.Module = model
    if distributed.world_size() > 1:
        trainer = nn.parallel.DistributedDataParallel(model)  # frozen (requires_grad=False) params are left out
    selection = data.tune if data.tune is not None else data.val
    split = "tuning" if selection is data.tune else "val"

    def score() -> dict[str, float]:
        """Accuracy where targets are classes; otherwise the training loss on the selection split."""
        if data.class_targets and data.labeled:
            return evaluate_classifier(model, selection, max_val_batches)
        return {"accuracy": math.nan, "loss": mean_loss(model, loss_fn, selection, max_val_batches)}

    if resume is not None:
        state = _restore(resume, model, optimizer, scheduler, data)
    else:
        state = EpochState()
        if spec.selects_epochs:
            state.start = score()
            state.best = _candidate(state.start, 0, model, spec.keep_best)
    for epoch in range(state.epoch + 1, spec.epochs + 1):
        began = time.perf_counter()
        trainer.train()
        for module in frozen_norms:
            module.eval()
        batches = itertools.islice(distributed.shard(data.train), steps)
        progress = track(batches, f"{label} epoch {epoch}/{spec.epochs}", total=steps)
        train_loss = train_one_epoch(trainer, progress, optimizer, scheduler, loss_fn, masks, epoch)
        distributed.sync_buffers(model)
        scored = score()
        _select(state, epoch, scored, model, spec.keep_best)
        if distributed.is_main():
            log(
                f"{label} epoch {epoch}/{spec.epochs}: train loss {train_loss:.4f}, {split} {_shown(scored)} "
                f"({time.perf_counter() - began:.1f}s)"
            )
        if on_epoch is not None:
            on_epoch(_resumable(state, model, optimizer, scheduler, data))
        if on_score is not None:
            on_score(scored)
        if spec.early_stopping is not None and state.stale >= spec.early_stopping:
            log(f"{label}: no better {split} score for {state.stale} epochs, stopping early")
            break
    return _finish(model, state, spec.keep_best, label)


def train_one_epoch(
    trainer: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: LossFn,
    masks: Sequence[tuple[nn.Parameter, torch.Tensor]],
    epoch: int,
) -> float:
    """One pass over `batches` (LR stepped per batch, pruned weights put back to zero after every
    step); returns the mean training loss."""
    loss_sum, seen = 0.0, 0
    for inputs, targets in batches:
        loss = loss_fn(trainer, inputs, targets) * distributed.batch_weight(batch_size(inputs))
        if not torch.isfinite(loss):
            raise UserError(f"training diverged (loss {loss.item()} in epoch {epoch}); lower the lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            for param, mask in masks:
                param.mul_(mask)
        loss_sum += loss.item() * batch_size(inputs)
        seen += batch_size(inputs)
    return loss_sum / max(seen, 1)


def _select(state: EpochState, epoch: int, score: dict[str, float], model: nn.Module, keep: bool) -> None:
    state.epoch = epoch
    if state.best is None or _beats(score, state.best):
        state.best, state.stale = _candidate(score, epoch, model, keep), 0
    else:
        state.stale += 1


def _finish(model: nn.Module, state: EpochState, keep_best: bool, label: str) -> FitResult:
    best = state.best
    if keep_best and best is not None and best["model"] is not None:
        model.load_state_dict(best["model"])
        which = "the starting weights" if best["epoch"] == 0 else f"epoch {best['epoch']}"
        log(f"{label}: keeping {which} ({_shown(best)} on the selection split)")
    kept = best["epoch"] if keep_best and best is not None else state.epoch
    score = {k: best[k] for k in ("accuracy", "loss")} if best is not None else None
    return FitResult(model.eval(), kept, state.epoch, state.start, score)


def _resumable(
    state: EpochState, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, data: DataBundle
) -> dict[str, Any]:
    return {
        "epoch": state.epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "loader_rng": data.train.generator.get_state(),
        "best": state.best,
        "stale": state.stale,
        "start": state.start,
    }


def _restore(
    saved: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, data: DataBundle
) -> EpochState:
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    data.train.generator.set_state(saved["loader_rng"])
    return EpochState(epoch=saved["epoch"], best=saved["best"], start=saved["start"], stale=saved["stale"])


def _candidate(score: dict[str, float], epoch: int, model: nn.Module, keep: bool) -> dict[str, Any]:
    return {**score, "epoch": epoch, "model": copy.deepcopy(model.state_dict()) if keep else None}


def _beats(score: dict[str, float], best: dict[str, Any]) -> bool:
    """Higher accuracy wins; equal accuracy, lower loss. On a small or memorised selection split
    accuracies often tie, and the loss still shows a model that got less sure of right answers."""

    def key(s: dict[str, Any]) -> tuple[float, float]:
        accuracy, loss = s["accuracy"], s["loss"]
        return (-math.inf if math.isnan(accuracy) else accuracy, -math.inf if math.isnan(loss) else -loss)

    return key(score) > key(best)


def make_optimizer(
    spec: TrainingSettings, params: NamedParams, extra_params: Sequence[nn.Parameter] = ()
) -> torch.optim.Optimizer:
    """Groups by learning rate (`layer_lrs`, first matching glob wins) and weight decay (none on
    biases and norm weights, the 1-D tensors, as torchvision's references do)."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    # Sorted by name: registration order changes when pruning re-registers a weight, and a resumed
    # optimizer state is matched to parameters by position.
    named = [*sorted(params, key=lambda item: item[0]), *(("", p) for p in extra_params)]
    for name, param in named:
        module_name = name.rpartition(".")[0]
        lr = next(
            (
                lr
                for pattern, lr in spec.layer_lrs.items()
                if fnmatchcase(name, pattern) or fnmatchcase(module_name, pattern)
            ),
            spec.lr,
        )
        decay = spec.weight_decay if param.dim() > 1 else 0.0
        groups.setdefault((lr, decay), []).append(param)
    param_groups = [{"params": ps, "lr": lr, "weight_decay": decay} for (lr, decay), ps in groups.items()]
    if spec.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=spec.lr, momentum=spec.momentum, nesterov=spec.momentum > 0)
    return torch.optim.AdamW(param_groups, lr=spec.lr)


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
        return sched.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total)
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
        call(model, inputs)
    for m, momentum in momenta.items():
        m.momentum = momentum
    model.eval()


def _shown(score: dict[str, Any]) -> str:
    if math.isnan(score["accuracy"]):
        return f"loss {score['loss']:.4f}"
    return f"accuracy {score['accuracy']:.4f}"


def task_loss(spec: TrainingSettings, data: DataBundle) -> OutputLoss:
    """The recipe's `loss` ('pkg.module:fn(outputs, targets)'), else cross-entropy on class indices."""
    if spec.loss is not None:
        return custom_loss(resolve(spec.loss, "loss"), spec.loss)
    if not (data.labeled and data.class_targets):
        raise UserError("training on targets that are not class indices needs loss: 'pkg.module:fn'")
    smoothing = spec.label_smoothing
    return lambda outputs, targets: F.cross_entropy(outputs, targets, label_smoothing=smoothing)


def on_model(loss: OutputLoss) -> LossFn:
    return lambda model, inputs, targets: loss(call(model, inputs), targets)


def custom_loss(fn: Callable[[Any, Any], Any], target: str) -> OutputLoss:
    def loss(outputs: Any, targets: Any) -> torch.Tensor:
        value = run_user_code(fn, target, "loss", outputs, targets)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise UserError(f"loss: {target} returned {type(value).__name__}, not a scalar tensor")
        return value.reshape(())

    return loss


@torch.no_grad()
def mean_loss(model: nn.Module, loss_fn: LossFn, loader: Iterable, max_batches: int | None) -> float:
    """The loss over a held-out split, per sample: how epochs are chosen when there are no classes."""
    model.eval()
    total, seen = 0.0, 0
    for inputs, targets in itertools.islice(loader, max_batches):
        n = batch_size(inputs)
        total += float(loss_fn(model, inputs, targets)) * n
        seen += n
    return total / seen if seen else math.nan
