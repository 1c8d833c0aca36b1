"""Quality on the validation split, in one pass over it.

- Against the labels, where they are class indices: top-1 and top-5 accuracy and mean cross-entropy.
- Against the original model, for any model: the mean cosine similarity of each sample's outputs to
  the original's (what embedding models are judged by; for classifiers it shows how far the logits
  moved even where top-1 did not), and the largest and the relative output error.
- For classifiers, labeled or not: top-1 agreement with the original (the share of inputs whose
  predicted class is the original's; a drop in accuracy says less on a small split than a change of
  predictions, and it needs no labels).

A metric that does not apply is NaN (null in report.json), never 0. Outputs may be any nesting of
tensors (`inputs.output_matrix`). A model with several outputs (a detector's boxes, scores and
landmarks) gets cosine and errors per output too (`outputs`, named as `inputs.output_names` does), and
its `cosine` is the lowest of them, its `rel_error` the highest: one cosine over all outputs joined let
box regressions hide a collapse of the scores (cosine rose while top-box IoU fell to 0.005).
The loss is NaN when the model's head has fewer classes than the
labels, as before a transfer-learning stage replaces it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from modelshrink.errors import UserError
from modelshrink.inputs import batch_size, call, logits, output_matrix, output_names, output_widths
from modelshrink.metrics.similarity import sample_cosines

NAN = math.nan


@dataclass
class Reference:
    """The original model's validation outputs, batch by batch, and whether it is a classifier; the
    name and width (columns of each batch) of each of its outputs."""

    outputs: list[torch.Tensor]
    classifier: bool
    names: tuple[str, ...] = ("output",)
    widths: tuple[int, ...] = ()


def declares_embedding(model: nn.Module) -> bool:
    """Embedding models (a Hugging Face `task: embedding`) say so: their argmax is no prediction."""
    return any(getattr(module, "task", None) == "embedding" for module in model.modules())


def classifies(task: str, model: nn.Module, outputs: object, labels: Literal["classes", "other", "none"]) -> bool:
    """Whether the outputs are class logits (top-1 agreement, KL distillation apply), by `evaluate.task`.

    auto: one (batch, classes) tensor, and either the data's labels are classes, or there are no
    labels, the model does not declare itself an embedding model and its outputs are not
    L2-normalised (sentence embeddings are; logits are not). Labels that are not classes (boxes,
    regression values) say the outputs are not logits either."""
    out = logits(outputs)
    if task != "auto" or out is None:
        return task == "classification" and out is not None
    if labels != "none":
        return labels == "classes"
    if out.shape[1] < 2 or declares_embedding(model):
        return False
    return not bool(torch.allclose(out.norm(dim=1), torch.ones(len(out)), atol=1e-3))


def label_kind(labeled: bool, class_targets: bool) -> Literal["classes", "other", "none"]:
    return ("classes" if class_targets else "other") if labeled else "none"


class _Closeness:
    """Running sums of how close outputs are to the reference's, for all outputs or one of them."""

    def __init__(self) -> None:
        self.cosine = self.squared_error = self.squared_reference = self.max_error = 0.0

    def add(self, out: torch.Tensor, ref: torch.Tensor) -> None:
        self.cosine += sample_cosines(out, ref).sum().item()
        difference = out - ref
        self.max_error = max(self.max_error, difference.abs().max().item()) if difference.numel() else self.max_error
        self.squared_error += difference.square().sum().item()
        self.squared_reference += ref.square().sum().item()

    def incomparable(self) -> None:
        self.cosine = self.max_error = self.squared_error = NAN

    def metrics(self, samples: int) -> dict[str, float]:
        return {
            "cosine": self.cosine / samples if samples else NAN,
            "max_abs_error": self.max_error if samples else NAN,
            "rel_error": math.sqrt(self.squared_error / self.squared_reference) if self.squared_reference else NAN,
        }


class _Tally:
    """Running sums over the batches of one pass."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.samples = self.correct = self.top5 = self.agreed = 0
        self.loss = 0.0
        self.all = _Closeness()
        self.each = {name: _Closeness() for name in names} if len(names) > 1 else {}

    def against_labels(self, out: torch.Tensor, targets: torch.Tensor) -> None:
        if targets.numel() and int(targets.max()) < out.shape[1]:
            self.loss += F.cross_entropy(out, targets, reduction="sum").item()
        else:  # a head for other classes (before transfer learning replaces it): no defined loss
            self.loss = NAN
        self.correct += (out.argmax(dim=1) == targets).sum().item()
        if out.shape[1] > 5:
            self.top5 += (out.topk(5, dim=1).indices == targets[:, None]).any(dim=1).sum().item()
        else:  # five guesses out of five or fewer classes are always right
            self.top5 = NAN

    def against_reference(
        self, out: torch.Tensor, ref: torch.Tensor, classifier: bool, widths: tuple[int, ...]
    ) -> None:
        if out.shape != ref.shape:  # a new head (transfer learning): no longer comparable with the original
            self.agreed = NAN
            for closeness in [self.all, *self.each.values()]:
                closeness.incomparable()
            return
        self.all.add(out, ref)
        if self.each:
            for closeness, part, reference in zip(
                self.each.values(), out.split(widths, dim=1), ref.split(widths, dim=1), strict=True
            ):
                closeness.add(part, reference)
        if classifier:
            self.agreed += (out.argmax(dim=1) == ref.argmax(dim=1)).sum().item()

    def closeness(self) -> dict[str, Any]:
        """cosine, max_abs_error and rel_error; per output too, with the worst output's as the whole's."""
        n = self.samples
        whole = self.all.metrics(n)
        if not self.each:
            return whole
        each = {name: closeness.metrics(n) for name, closeness in self.each.items()}
        whole["cosine"] = min((m["cosine"] for m in each.values()), key=_nan_first)
        whole["rel_error"] = max((m["rel_error"] for m in each.values()), key=_nan_last)
        return {**whole, "outputs": each}


def _nan_first(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def _nan_last(value: float) -> float:
    return math.inf if math.isnan(value) else value


@torch.inference_mode()
def evaluate_outputs(
    model: nn.Module,
    loader: Iterable,
    max_batches: int | None = None,
    *,
    labeled: bool = True,
    class_targets: bool = True,
    task: str = "auto",
    reference: Reference | None = None,
) -> tuple[dict[str, float], Reference]:
    """Metrics, and the outputs themselves (the reference for later models; without `reference`
    the model is compared with itself). `task`: see `classifies`; a reference's choice stands."""
    model.eval()
    tally: _Tally | None = None
    outputs: list[torch.Tensor] = []
    classifier = reference.classifier if reference is not None else None
    for index, (inputs, targets) in enumerate(itertools.islice(loader, max_batches)):
        raw = call(model, inputs)
        out = output_matrix(raw)
        if not bool(torch.isfinite(out).all()):
            raise UserError(f"the model's outputs hold NaN or Inf (validation batch {index + 1})")
        if classifier is None:
            classifier = classifies(task, model, raw, label_kind(labeled, class_targets))
        if reference is None:
            reference = Reference(outputs, classifier, tuple(output_names(raw)), tuple(output_widths(raw)))
        tally = tally or _Tally(reference.names)
        outputs.append(out)
        tally.against_reference(out, reference.outputs[index], classifier, reference.widths)
        tally.samples += batch_size(inputs)
        if labeled and class_targets and classifier:
            tally.against_labels(out, targets)
    tally = tally or _Tally(())
    n = tally.samples
    with_labels = labeled and class_targets and bool(classifier) and n > 0
    closeness = tally.closeness()
    metrics = {
        "accuracy": tally.correct / n if with_labels else NAN,
        "top5": tally.top5 / n if with_labels else NAN,
        "loss": tally.loss / n if with_labels else NAN,
        "cosine": closeness.pop("cosine"),
        "agreement": tally.agreed / n if classifier and n else NAN,
        **closeness,
    }
    names, widths = (reference.names, reference.widths) if reference else (("output",), ())
    return metrics, Reference(outputs, bool(classifier), names, widths)


def evaluate_classifier(model: nn.Module, loader: Iterable, max_batches: int | None = None) -> dict[str, float]:
    """Accuracy and loss alone, for training loops choosing their best epoch."""
    metrics, _ = evaluate_outputs(model, loader, max_batches)
    return {"accuracy": metrics["accuracy"], "loss": metrics["loss"]}
