"""Choosing between quantization variants by measuring them on this CPU, on calibration data.

A knob a stage sets for itself (SmoothQuant's alpha, per-token or per-tensor activation scales) is
chosen here, never on the validation split that reports quality and gates the run: that would make
the reported numbers flatter the model. Quality comes first: the fastest variant is kept only among
those whose outputs are as close to the float model's as the best one's (within `TOLERANCE`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modelshrink.inputs import Inputs, call, output_matrix

TOLERANCE = 0.001  # cosine to float within which variants count as equally good
TIMED_RUNS = 3


@dataclass(frozen=True)
class Trial:
    name: str
    cosine: float  # mean per-sample cosine of the outputs to the float model's
    ms: float  # median time of one forward pass on the first batch

    def __str__(self) -> str:
        return f"{self.name}: cosine {self.cosine:.4f}, {self.ms:.1f} ms"


@torch.inference_mode()
def measure(reference: nn.Module, candidates: dict[str, nn.Module], batches: Sequence[Inputs]) -> list[Trial]:
    expected = [output_matrix(call(reference.eval(), batch)) for batch in batches]
    trials = []
    for name, model in candidates.items():
        model.eval()
        cosines = [
            F.cosine_similarity(output_matrix(call(model, batch)), want, dim=1)
            for batch, want in zip(batches, expected, strict=True)
        ]
        times = []
        for _ in range(TIMED_RUNS):
            start = time.perf_counter()
            call(model, batches[0])
            times.append((time.perf_counter() - start) * 1000)
        trials.append(Trial(name, float(torch.cat(cosines).mean()), statistics.median(times)))
    return trials


def pick(trials: Sequence[Trial]) -> Trial:
    """The fastest of the variants as good as the best one."""
    best = max(trial.cosine for trial in trials)
    return min((t for t in trials if t.cosine >= best - TOLERANCE), key=lambda t: t.ms)


def finding(what: str, trials: Sequence[Trial], chosen: Trial) -> str:
    """The choice and what it was made from, for the report's findings."""
    return (
        f"{what} chosen on the calibration data (not the validation split): {chosen.name} "
        f"({'; '.join(map(str, trials))})"
    )
