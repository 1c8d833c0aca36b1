"""How far a changed model's outputs are from a reference model's on a few batches, without labels:
1 - top-1 agreement for classifiers, 1 - mean cosine otherwise. Used where a choice is made on
calibration data (per-layer sensitivity, mixed precision), never on the split that reports quality."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from modelshrink.inputs import Inputs, call, output_matrix, output_widths
from modelshrink.metrics.accuracy import classifies, label_kind
from modelshrink.metrics.similarity import worst_output_cosine

if TYPE_CHECKING:
    from modelshrink.data.bundle import DataBundle


def is_classifier(model: nn.Module, batch: Inputs, task: str, data: DataBundle) -> bool:
    """Whether the outputs are class logits, decided as the report decides it (`accuracy.classifies`):
    a sentence encoder's (batch, dim) embeddings are no logits, and top-1 agreement on them means nothing."""
    with torch.inference_mode():
        raw = call(model.eval(), batch)
    return classifies(task, model, raw, label_kind(data.labeled, data.class_targets))


class OutputDrop:
    """The reference model's outputs on `batches`, and how far another model's are from them; for a
    model with several outputs, the cosine is the worst output's, as the report's is."""

    def __init__(self, reference: nn.Module, batches: list[Inputs], classification: bool):
        self.batches, self.classification = batches, classification
        with torch.inference_mode():
            self.widths = output_widths(call(reference.eval(), batches[0]))
        self.expected = self._outputs(reference)

    @torch.inference_mode()
    def _outputs(self, model: nn.Module) -> list[torch.Tensor]:
        return [output_matrix(call(model.eval(), batch)).float() for batch in self.batches]

    def __call__(self, model: nn.Module) -> float:
        pairs = list(zip(self._outputs(model), self.expected, strict=True))
        if self.classification:
            same = torch.cat([out.argmax(1) == want.argmax(1) for out, want in pairs]).float()
            return max(0.0, 1.0 - same.mean().item())
        return max(0.0, 1.0 - self.cosine(pairs))

    def cosine(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """Mean cosine over the batches, per output; the lowest of them."""
        return worst_output_cosine(pairs, self.widths)
