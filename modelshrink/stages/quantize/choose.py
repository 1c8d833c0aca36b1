"""Choosing between quantization variants by measuring them on this CPU, on calibration data.

A knob a stage sets for itself (SmoothQuant's alpha, per-token or per-tensor activation scales) is
chosen here, never on the validation split that reports quality and gates the run: that would make
the reported numbers flatter the model. Quality comes first: the fastest variant is kept only among
those whose outputs are as close to the float model's as the best one's (within `TOLERANCE`).

Speed is timed at the batch sizes the recipe deploys (`evaluate.latency`: 1 and N), not at the
calibration batch's: static int8 on a small CNN ran 2.3x fp32 at batch 16 but 0.5x at batch 1. The
fastest is the one with the smallest geometric mean, over those sizes, of its time over the best time.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from modelshrink.inputs import Inputs, batch_size, call, output_matrix, output_widths
from modelshrink.metrics.latency import time_round_robin
from modelshrink.metrics.similarity import worst_output_cosine

TOLERANCE = 0.001  # cosine to float within which variants count as equally good
TIMED_RUNS = 5


@dataclass(frozen=True)
class Trial:
    name: str
    cosine: float  # mean per-sample cosine of the outputs to the float model's
    ms: dict[int, float]  # batch size -> median time of one forward pass
    slowness: float = 1.0  # geometric mean over batch sizes of ms / the fastest trial's ms (1: fastest at all)

    def __str__(self) -> str:
        times = ", ".join(f"b{n} {ms:.2f} ms" for n, ms in self.ms.items())
        return f"{self.name}: cosine {self.cosine:.4f}, {times}"


@torch.inference_mode()
def cosine(model: nn.Module, reference: nn.Module, batches: Sequence[Inputs]) -> float:
    """Mean per-sample cosine of `model`'s outputs to `reference`'s on `batches`: the worst output's, for a
    model with several (as `min_cosine` and the report judge it)."""
    model.eval(), reference.eval()
    expected = [call(reference, batch) for batch in batches]
    pairs = [(output_matrix(call(model, b)), output_matrix(want)) for b, want in zip(batches, expected, strict=True)]
    return worst_output_cosine(pairs, output_widths(expected[0]))


@torch.inference_mode()
def measure(
    reference: nn.Module, candidates: dict[str, nn.Module], batches: Sequence[Inputs], deployed: Sequence[Inputs]
) -> list[Trial]:
    """Each candidate's cosine on `batches` and its time on each of `deployed` (one batch per size)."""
    cosines = {name: cosine(model, reference, batches) for name, model in candidates.items()}
    # timed round-robin, one forward of each in turn, so machine noise hits all variants alike
    times: dict[str, dict[int, float]] = {name: {} for name in candidates}
    for inputs in deployed:
        samples = time_round_robin(list(candidates.values()), inputs, warmup=1, iterations=TIMED_RUNS)
        for name, timed in zip(candidates, samples, strict=True):
            times[name][batch_size(inputs)] = statistics.median(timed)
    fastest = {n: min(ms[n] for ms in times.values()) for n in times[next(iter(candidates))]}
    return [
        Trial(name, cosines[name], ms, math.prod(ms[n] / fastest[n] for n in ms) ** (1 / len(ms)))
        for name, ms in times.items()
    ]


def pick(trials: Sequence[Trial]) -> Trial:
    """The fastest (across the deployed batch sizes) of the variants as good as the best one."""
    best = max(trial.cosine for trial in trials)
    return min((t for t in trials if t.cosine >= best - TOLERANCE), key=lambda t: t.slowness)


def choose(
    what: str,
    reference: nn.Module,
    candidates: dict[str, nn.Module],
    batches: Sequence[Inputs],
    findings: list[str],
    deployed: Sequence[Inputs],
) -> str:
    """Measure the candidates (quality on `batches`, speed on `deployed`: `StageContext.deployed_inputs`),
    pick one (`pick`), say so in `findings`; returns the chosen name."""
    trials = measure(reference, candidates, batches, deployed)
    chosen = pick(trials)
    findings.append(finding(what, trials, chosen))
    return chosen.name


def finding(what: str, trials: Sequence[Trial], chosen: Trial) -> str:
    """The choice and what it was made from, for the report's findings."""
    sizes = " and ".join(str(n) for n in chosen.ms)
    return (
        f"{what} chosen on the calibration data (not the validation split), timed at batch {sizes}: "
        f"{chosen.name} ({'; '.join(map(str, trials))})"
    )
