"""Mixed precision by sensitivity (`mixed: {max_drop}` on a quantize stage): which layers stay float.

Each layer the mode can quantize is quantized alone (every other layer excluded) and scored by how far
the outputs move on calibration batches (`metrics.drop`). Then the whole model is quantized with the
k most sensitive layers kept float, k = 0, 1, 2, ..., until the drop fits `max_drop`. Trial models
run eager (no compile) in a throwaway context, so nothing they record reaches the checkpoint; the
stage then quantizes once more with the chosen `exclude`, compiled as the spec says.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from torch import nn

from modelshrink.errors import UserError
from modelshrink.lineage import Lineage
from modelshrink.metrics.drop import OutputDrop, is_classifier
from modelshrink.stages.base import StageContext
from modelshrink.stages.selection import matches_any
from modelshrink.stages.structured import PRUNABLE

LAYER_TYPES = (*PRUNABLE, nn.Embedding)  # what the quantize modes touch


def keep_float(stage: Any, model: nn.Module, ctx: StageContext) -> tuple[list[str], list[str]]:
    """The layers to keep float so that the drop fits, and findings that say how it was found."""
    spec = stage.spec
    batches = list(ctx.calibration_inputs(spec.mixed.calibration_batches))
    drop = OutputDrop(model, batches, is_classifier(model, batches[0], ctx.evaluate.task))
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, LAYER_TYPES) and not matches_any(name, spec.exclude)
    ]

    def trial(exclude: list[str]) -> float | None:
        """The drop with `exclude` kept float; None when the mode finds nothing left to quantize."""
        trial_spec = spec.model_copy(update={"exclude": [*spec.exclude, *exclude], "compile": False, "mixed": None})
        scratch = dataclasses.replace(
            ctx, lineage=Lineage(ctx.lineage.architecture, list(ctx.lineage.transforms)), notes={}
        )
        try:
            return drop(type(stage)(trial_spec, stage.name).quantize(copy.deepcopy(model), scratch))
        except UserError:  # e.g. nothing this mode can quantize
            return None

    alone = {name: trial([other for other in names if other != name]) for name in names}
    ranked = sorted((name for name in names if alone[name] is not None), key=lambda n: -alone[n])  # type: ignore[operator]
    worst = ", ".join(f"{name} {alone[name]:.4f}" for name in ranked[:5])
    findings = [f"mixed precision: drop of each layer quantized alone, most sensitive first: {worst}"]
    for k in range(len(ranked) + 1):
        measured = trial(ranked[:k])
        if measured is not None and measured <= spec.mixed.max_drop:
            kept = ranked[:k]
            findings.append(
                f"mixed precision: {len(kept)} of {len(ranked)} layers kept float "
                f"({', '.join(kept) or 'none'}) for a drop of {measured:.4f} <= max_drop {spec.mixed.max_drop:g}"
            )
            return kept, findings
    raise UserError(
        f"mixed: no set of float layers brings the drop within max_drop {spec.mixed.max_drop:g} "
        "(even a single quantized layer costs more); raise max_drop or leave this stage out"
    )
