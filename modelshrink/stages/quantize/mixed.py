"""Mixed precision by sensitivity (`mixed: {max_drop}` on a quantize stage): which layers stay at a higher
precision (float; int8 where the rest is int4: the spec's `kept_precision`).

Each layer the mode can quantize is quantized alone (every other layer excluded) and scored by how far
the outputs move on calibration batches (`metrics.drop`). Then the whole model is quantized with the
k most sensitive layers kept at the higher precision, k = 0, 1, 2, ..., until the drop fits `max_drop`.
Trial models run eager (no compile) in a throwaway context, so nothing they record reaches the
checkpoint; the stage then quantizes once more with the chosen layers kept, compiled as the spec says.
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


def keep_sensitive(stage: Any, model: nn.Module, ctx: StageContext) -> tuple[list[str], list[str]]:
    """The layers to keep at the spec's `kept_precision` so that the drop fits, and findings that say how."""
    spec = stage.spec
    precision = spec.kept_precision
    batches = list(ctx.calibration_inputs(spec.mixed.calibration_batches))
    drop = OutputDrop(model, batches, is_classifier(model, batches[0], ctx.evaluate.task, ctx.data))
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, LAYER_TYPES) and not matches_any(name, spec.exclude)
    ]

    def trial(trial_spec: Any) -> float | None:
        """The drop with this spec; None when the mode finds nothing left to quantize."""
        trial_spec = trial_spec.model_copy(update={"compile": False, "mixed": None})
        scratch = dataclasses.replace(
            ctx, lineage=Lineage(ctx.lineage.architecture, list(ctx.lineage.transforms)), notes={}
        )
        try:
            return drop(type(stage)(trial_spec, stage.name).quantize(copy.deepcopy(model), scratch))
        except UserError:  # e.g. nothing this mode can quantize
            return None

    alone = {
        name: trial(spec.model_copy(update={"exclude": [*spec.exclude, *(other for other in names if other != name)]}))
        for name in names
    }
    ranked = sorted((name for name in names if alone[name] is not None), key=lambda n: -alone[n])  # type: ignore[operator]
    worst = ", ".join(f"{name} {alone[name]:.4f}" for name in ranked[:5])
    findings = [f"mixed precision: drop of each layer quantized alone, most sensitive first: {worst}"]
    closest = float("inf")
    for k in range(len(ranked) + 1):
        measured = trial(spec.keeping(ranked[:k]))
        if measured is None:
            continue
        closest = min(closest, measured)
        if measured <= spec.mixed.max_drop:
            kept = ranked[:k]
            findings.append(
                f"mixed precision: {len(kept)} of {len(ranked)} layers kept {precision} "
                f"({', '.join(kept) or 'none'}) for a drop of {measured:.4f} <= max_drop {spec.mixed.max_drop:g}"
            )
            return kept, findings
    raise UserError(
        f"mixed: no set of {precision} layers brings the drop within max_drop {spec.mixed.max_drop:g} "
        f"(the smallest measured: {closest:.4f}); raise max_drop or leave this stage out"
    )
