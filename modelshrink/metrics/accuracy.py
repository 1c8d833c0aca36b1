"""Quality on the validation split, in one pass: top-1 accuracy and mean cross-entropy (for labeled
data), top-1 agreement with the original model (the share of inputs whose predicted class is the
original's: a drop in accuracy says less on a small split than a change of predictions), and the
mean cosine similarity of each output to the original model's output for the same input. The cosine
is what embedding models are judged by, and for classifiers it shows how far the logits moved even
where top-1 did not. The loss is NaN when the model's head has fewer classes than
the labels, as before a transfer-learning stage replaces it."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from modelshrink.errors import UserError


@torch.inference_mode()
def evaluate_outputs(
    model: nn.Module,
    loader: DataLoader,
    max_batches: int | None = None,
    *,
    labeled: bool = True,
    reference: Sequence[torch.Tensor] | None = None,
) -> tuple[dict[str, float], list[torch.Tensor]]:
    """Metrics, and without `reference` the outputs themselves (to be the reference; cosine 1)."""
    model.eval()
    correct, total, loss_sum, cosine_sum, agreed = 0, 0, 0.0, 0.0, 0.0
    outputs = []
    for index, (inputs, targets) in enumerate(itertools.islice(loader, max_batches)):
        out = model(inputs).float()
        if not bool(torch.isfinite(out).all()):
            raise UserError(f"the model's outputs hold NaN or Inf (validation batch {index + 1})")
        if reference is None:
            outputs.append(out)
        elif out.shape == reference[index].shape:
            cosine_sum += F.cosine_similarity(out.flatten(1), reference[index].flatten(1), dim=1).sum().item()
            agreed += (out.argmax(dim=1) == reference[index].argmax(dim=1)).sum().item()
        else:  # a new head (transfer learning): outputs no longer comparable with the original's
            cosine_sum = agreed = float("nan")
        total += targets.numel()
        if not labeled:
            continue
        if targets.max() < out.shape[1]:
            loss_sum += F.cross_entropy(out, targets, reduction="sum").item()
        else:  # a head for other classes (before transfer learning replaces it): no defined loss
            loss_sum = float("nan")
        correct += (out.argmax(dim=1) == targets).sum().item()
    nan = float("nan")
    if total == 0:
        return {"accuracy": nan, "loss": nan, "cosine": nan, "agreement": nan}, outputs
    return {
        "accuracy": correct / total if labeled else nan,
        "loss": loss_sum / total if labeled else nan,
        "cosine": cosine_sum / total if reference is not None else 1.0,
        # classifiers only (labeled data); an embedding's argmax means nothing
        "agreement": (agreed / total if reference is not None else 1.0) if labeled else nan,
    }, outputs


def evaluate_classifier(model: nn.Module, loader: DataLoader, max_batches: int | None = None) -> dict[str, float]:
    """Accuracy and loss alone, for training loops choosing their best epoch."""
    metrics, _ = evaluate_outputs(model, loader, max_batches)
    return {"accuracy": metrics["accuracy"], "loss": metrics["loss"]}
