"""CI gates: compare the final model with the baseline against the recipe's limits."""

from __future__ import annotations

import math
from typing import Any

from modelshrink.recipe.schema import ConstraintsSpec


def check_constraints(spec: ConstraintsSpec, baseline: dict[str, Any], final: dict[str, Any]) -> list[dict[str, Any]]:
    results = []
    if spec.max_accuracy_drop is not None:
        drop = baseline["accuracy"] - final["accuracy"]
        results.append(_result("max_accuracy_drop", spec.max_accuracy_drop, drop, drop <= spec.max_accuracy_drop))
    if spec.min_accuracy is not None:
        acc = final["accuracy"]
        results.append(_result("min_accuracy", spec.min_accuracy, acc, acc >= spec.min_accuracy))
    if spec.min_cosine is not None:
        cosine = final["cosine"]
        results.append(_result("min_cosine", spec.min_cosine, cosine, cosine >= spec.min_cosine))
    return results


def _result(name: str, limit: float, value: float, passed: bool) -> dict[str, Any]:
    # A NaN (e.g. an empty validation split) compares False either way: it must never pass a gate.
    return {"name": name, "limit": limit, "value": value, "passed": bool(passed) and not math.isnan(value)}
