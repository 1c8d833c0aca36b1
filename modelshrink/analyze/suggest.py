"""What the measured sensitivities suggest for a recipe: per-layer pruning ratios and layers to keep float.

Each layer gets the largest channel ratio whose drop alone stays within `max_drop`; a layer no ratio
fits is excluded from pruning; where no ratio fits any layer, no amount is suggested. A layer whose int8
weights, or static int8 of its weights and input, alone cost more than `max_drop` is excluded from
quantization. Drops add up roughly when layers are combined, so these are starting points for
a recipe (or a `tune` search), not a guarantee: the run's own gates decide.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelshrink.analyze.probe import LayerSensitivity


def suggestions(rows: Sequence[LayerSensitivity], max_drop: float, unrefined: Sequence[str] = ()) -> dict[str, Any]:
    """`unrefined`: layers measured at the middle ratio only; one that did not fit there is left to the
    recipe (neither given an amount nor excluded): the smaller ratios were never tried."""
    layer_amounts: dict[str, float] = {}
    prune_exclude, quantize_exclude, int4 = [], [], []
    for row in rows:
        ratios = [(float(label.split()[1]), drop) for label, drop in row.drops.items() if label.startswith("channel")]
        fitting = [ratio for ratio, drop in ratios if drop <= max_drop]
        if fitting:
            layer_amounts[row.name] = max(fitting)
        elif ratios and row.name not in unrefined:
            prune_exclude.append(row.name)
        if max(row.drops.get("int8", 0.0), row.drops.get("static int8", 0.0)) > max_drop:
            quantize_exclude.append(row.name)
        if "int4" in row.drops and row.drops["int4"] <= max_drop:
            int4.append(row.name)
    # layers not measured (or not in `layer_amounts`) get the most careful ratio that fitted anywhere; where
    # no channel probe fitted (or none could run) there is nothing to suggest: amount is null
    amount = min(layer_amounts.values(), default=None)
    return {
        "prune": {"method": "channel", "amount": amount, "layer_amounts": layer_amounts, "exclude": prune_exclude},
        "quantize": {"exclude": quantize_exclude},
        "int4_fits": int4,
    }
