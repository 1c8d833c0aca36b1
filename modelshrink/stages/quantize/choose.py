"""Choosing between quantization variants by measuring them on this CPU, on calibration data.

A knob a stage sets for itself (SmoothQuant's alpha, per-token or per-tensor activation scales) is
chosen here, never on the validation split that reports quality and gates the run: that would make
the reported numbers flatter the model. Quality comes first: the fastest variant is kept only among
those whose outputs are as close to the float model's as the best one's (within `TOLERANCE`).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modelshrink.inputs import Inputs, call, output_matrix
from modelshrink.metrics.latency import time_round_robin

TOLERANCE = 0.001  # cosine to float within which variants count as equally good
TIMED_RUNS = 5


@dataclass(frozen=True)
class Trial:
    name: str
    cosine: float  # mean per-sample cosine of the outputs to the float model's
    ms: float  # median time of one forward pass on the first batch

    def __str__(self) -> str:
        return f"{self.name}: cosine {self.cosine:.4f}, {self.ms:.1f} ms"


@torch.inference_mode()
def cosine(model: nn.Module, reference: nn.Module, batches: Sequence[Inputs]) -> float:
    """Mean per-sample cosine of `model`'s outputs to `reference`'s on `batches`."""
    model.eval(), reference.eval()
    return torch.cat([
        F.cosine_similarity(output_matrix(call(model, batch)), output_matrix(call(reference, batch)), dim=1)
        for batch in batches
    ]).mean().item()  # fmt: skip


@torch.inference_mode()
def measure(reference: nn.Module, candidates: dict[str, nn.Module], batches: Sequence[Inputs]) -> list[Trial]:
    cosines = {name: cosine(model, reference, batches) for name, model in candidates.items()}
    # timed round-robin, one forward of each in turn, so machine noise hits all variants alike
    times = time_round_robin(list(candidates.values()), batches[0], warmup=1, iterations=TIMED_RUNS)
    return [
        Trial(name, cosines[name], statistics.median(samples)) for name, samples in zip(candidates, times, strict=True)
    ]


def pick(trials: Sequence[Trial]) -> Trial:
    """The fastest of the variants as good as the best one."""
    best = max(trial.cosine for trial in trials)
    return min((t for t in trials if t.cosine >= best - TOLERANCE), key=lambda t: t.ms)


def choose(
    what: str, reference: nn.Module, candidates: dict[str, nn.Module], batches: Sequence[Inputs], findings: list[str]
) -> str:
    """Measure the candidates, pick one (`pick`), say so in `findings`; returns the chosen name."""
    trials = measure(reference, candidates, batches)
    chosen = pick(trials)
    findings.append(finding(what, trials, chosen))
    return chosen.name


def finding(what: str, trials: Sequence[Trial], chosen: Trial) -> str:
    """The choice and what it was made from, for the report's findings."""
    return (
        f"{what} chosen on the calibration data (not the validation split): {chosen.name} "
        f"({'; '.join(map(str, trials))})"
    )
