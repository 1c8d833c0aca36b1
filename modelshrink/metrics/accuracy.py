"""Top-1 accuracy and mean cross-entropy on the validation split (loss NaN when the model's head
has fewer classes than the labels, as before a transfer-learning stage replaces it)."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader


@torch.inference_mode()
def evaluate_classifier(model: nn.Module, loader: DataLoader, max_batches: int | None = None) -> dict[str, float]:
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    for inputs, targets in itertools.islice(loader, max_batches):
        logits = model(inputs)
        if targets.max() < logits.shape[1]:
            loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        else:  # a head for other classes (before transfer learning replaces it): no defined loss
            loss_sum = float("nan")
        correct += (logits.argmax(dim=1) == targets).sum().item()
        total += targets.numel()
    if total == 0:
        return {"accuracy": float("nan"), "loss": float("nan")}
    return {"accuracy": correct / total, "loss": loss_sum / total}
