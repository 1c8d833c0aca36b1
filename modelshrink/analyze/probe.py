"""Per-layer sensitivity: how much the model's outputs move when one layer alone is compressed.

Each probe is a real stage (`apply_stage` on a copy of the model): channel pruning at a few ratios
with `include` naming the one layer, unstructured pruning of that layer alone, int8 (and for Linear
layers int4) weight-only quantization with every other layer excluded. So what is measured is what
the recipe's stages would do, and a layer a method cannot touch says why instead of a number.

The drop is measured on calibration batches (never the validation split that reports quality and
gates runs) against the original model's outputs, without labels: top-1 agreement for classifiers,
mean cosine otherwise; drop = 1 - that.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from modelshrink.data.bundle import DataBundle
from modelshrink.errors import UserError, first_line
from modelshrink.lineage import Lineage
from modelshrink.metrics.drop import OutputDrop, is_classifier
from modelshrink.quiet import quiet
from modelshrink.recipe.recipe import Recipe
from modelshrink.stages import StageContext, apply_stage
from modelshrink.stages.structured import PRUNABLE

RATIOS = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class Probe:
    """One way of compressing one layer: a label for tables and the stage that does it."""

    label: str
    stage: dict[str, Any]


@dataclass
class LayerSensitivity:
    name: str
    type: str
    params: int
    drops: dict[str, float] = field(default_factory=dict)  # probe label -> drop
    skipped: dict[str, str] = field(default_factory=dict)  # probe label -> why it could not run


def probes(name: str, layer: nn.Module, others: list[str], ratios: Sequence[float]) -> list[Probe]:
    """What is tried on `layer`; `others`: every other layer's name (excluded from quantization)."""
    found = [Probe(f"channel {r:g}", {"kind": "prune", "method": "channel", "amount": r, "include": [name]})
             for r in ratios]  # fmt: skip
    found += [
        Probe(f"unstructured {r:g}", {"kind": "prune", "amount": r, "scope": "layer", "include": [name]})
        for r in ratios
    ]
    found.append(Probe("int8", {"kind": "quantize", "mode": "weight_only", "bits": 8, "exclude": others}))
    if isinstance(layer, nn.Linear):
        found.append(Probe("int4", {"kind": "quantize", "mode": "weight_only", "bits": 4, "exclude": others}))
    return found


def layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, PRUNABLE)]


def sensitivities(
    model: nn.Module,
    data: DataBundle,
    recipe: Recipe,
    *,
    batches: int,
    ratios: Sequence[float],
    budget_s: float,
) -> Iterator[tuple[LayerSensitivity, float]]:
    """Each layer's sensitivity in turn with the seconds spent so far; stops once `budget_s` is spent
    (the layer under way is finished first, and the first layer is always measured)."""
    probe_batches = list(data.calibration_inputs(batches))
    drop = OutputDrop(model, probe_batches, is_classifier(model, probe_batches[0], recipe.evaluate.task, data))
    named = layers(model)
    start = time.perf_counter()
    for index, (name, layer) in enumerate(named):
        if index and time.perf_counter() - start > budget_s:
            return
        others = [other for other, _ in named if other != name]
        row = LayerSensitivity(name, type(layer).__name__, sum(p.numel() for p in layer.parameters()))
        for probe in probes(name, layer, others, ratios):
            ctx = StageContext(
                data=data, original_model=model, lineage=Lineage({}), evaluate=recipe.evaluate, seed=recipe.seed
            )
            try:
                with quiet():
                    changed = apply_stage(copy.deepcopy(model), probe.stage, ctx, probe.label)
                row.drops[probe.label] = drop(changed)
            except UserError as exc:  # the method cannot touch this layer (a classifier, nothing to quantize)
                row.skipped[probe.label] = first_line(exc)
        yield row, time.perf_counter() - start
