"""Cosine similarity of each sample's outputs to a reference's, as every metric and choice uses it.

Computed in float64, with a sample whose outputs equal the reference's exactly counted as 1: torch's
cosine of two zero rows is 0 (an identical model scored 0.5 where half its outputs were zeros, e.g. a
ReLU head), and float32 rounding put an identical model just below a `min_cosine: 1.0` bar."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def sample_cosines(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """One cosine per row of two (samples, features) matrices; identical rows (zeros included) are 1."""
    out, ref = out.double(), ref.double()
    identical = (out == ref).all(dim=1)
    return torch.where(identical, 1.0, F.cosine_similarity(out, ref, dim=1).clamp(-1.0, 1.0))


def worst_output_cosine(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], widths: Sequence[int]) -> float:
    """The mean cosine over all `pairs` (output, reference matrices of the batches) of each output (the
    columns `widths` give it), lowest first: one cosine over outputs joined lets box regressions hide a
    collapse of the scores."""
    per_output = [
        torch.cat([sample_cosines(out.split(widths, 1)[i], ref.split(widths, 1)[i]) for out, ref in pairs]).mean()
        for i in range(len(widths))
    ]
    return min(per_output).item()
