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
from modelshrink.stages.prune.channel import PRUNABLE
from modelshrink.stages.selection import matches_any

LAYER_TYPES = (*PRUNABLE, nn.Embedding)  # what the quantize modes touch
JUDGING_BATCHES = 4  # calibration batches a static stage's min_cosine is judged on


def keep_sensitive(
    stage: Any, model: nn.Module, ctx: StageContext, floor: float | None = None
) -> tuple[list[str], list[str]]:
    """The layers to keep at the spec's `kept_precision` so that the drop fits `mixed.max_drop`, and
    findings that say how; with `floor` (a static stage's `min_cosine`), until the cosine to the float
    model (the worst output's) is at least `floor`."""
    spec = stage.spec
    precision = spec.kept_precision
    batches = list(ctx.calibration_inputs(spec.mixed.calibration_batches if floor is None else JUDGING_BATCHES))
    by_cosine = floor is not None or not is_classifier(model, batches[0], ctx.evaluate.task, ctx.data)
    drop = OutputDrop(model, batches, classification=not by_cosine)
    max_drop, limit = (spec.mixed.max_drop, f"max_drop {spec.mixed.max_drop:g}") if floor is None else (
        1 - floor, f"min_cosine {floor:g} (a drop of {1 - floor:.4g})")  # fmt: skip
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, LAYER_TYPES) and not matches_any(name, spec.exclude)
    ]

    def trial(trial_spec: Any) -> float | None:
        """The drop with this spec; None when the mode finds nothing left to quantize."""
        off = {"compile": False, "mixed": None, "min_cosine": None}
        trial_spec = trial_spec.model_copy(update={k: v for k, v in off.items() if k in type(trial_spec).model_fields})
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
    worst += f" (and {len(ranked) - 5} less sensitive layers)" if len(ranked) > 5 else ""
    findings = [f"mixed precision: drop of each layer quantized alone, most sensitive first: {worst}"]
    closest = float("inf")
    # min_cosine quantizes: a floor met only with every layer float is not met
    for k in range(len(ranked) + (floor is None)):
        measured = trial(spec.keeping(ranked[:k]))
        if measured is None:
            continue
        closest = min(closest, measured)
        if measured <= max_drop:
            kept = ranked[:k]
            findings.append(
                f"mixed precision: {len(kept)} of {len(ranked)} layers kept {precision} "
                f"({', '.join(kept) or 'none'}) for a drop of {measured:.4f}, within {limit}"
            )
            return kept, findings
    what = "mixed" if floor is None else "min_cosine"
    raise UserError(
        f"{what}: no set of {precision} layers brings the drop within {limit} "
        f"(the smallest measured: {closest:.4f}); relax it or leave this stage out"
    )
