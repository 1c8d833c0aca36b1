"""The user's own metrics: `evaluate.metrics: ["pkg.module:fn"]`, each `fn(model, val_loader)`
returning `{name: float}`. A loader item is what the data yields: `(inputs, targets)`.

The values land in `Metrics["custom"]` and from there in report.json, report.md, the CLI table and
the gates (`constraints: {map50: {max_drop: 0.01}}`), through descriptors made from their names
(`descriptors.custom_descriptor`). A value that is not defined is NaN (null), as for built-in metrics.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from modelshrink.descriptors import METRICS
from modelshrink.errors import UserError
from modelshrink.plugins import resolve, run_user_code
from modelshrink.recipe.schema import CustomMetricSpec


def custom_metrics(model: nn.Module, loader: DataLoader, specs: Sequence[CustomMetricSpec]) -> dict[str, float]:
    values: dict[str, float] = {}
    for index, spec in enumerate(specs):
        where = f"evaluate.metrics[{index}]"
        fn = resolve(spec.function, where)
        model.eval()
        with torch.inference_mode():
            result = run_user_code(fn, spec.function, where, model, loader)
        if not isinstance(result, dict) or not result:
            raise UserError(f"{where}: {spec.function} returned {type(result).__name__}, not a {{name: value}} dict")
        for name, value in result.items():
            values[_checked_name(name, values, where)] = _checked_value(name, value, where)
    return values


def directions(specs: Sequence[CustomMetricSpec], values: dict[str, float]) -> dict[str, str]:
    """Which way each returned metric is better, for the report (higher unless declared lower)."""
    lower = {name for spec in specs for name in spec.lower_is_better}
    return {name: "lower" if name in lower else "higher" for name in values}


def _checked_name(name: object, seen: dict[str, float], where: str) -> str:
    if not isinstance(name, str) or not name.isidentifier():
        raise UserError(f"{where}: metric name {name!r} is not an identifier (it names a gate in constraints:)")
    if name in METRICS or name in seen:
        raise UserError(f"{where}: metric name {name!r} is already taken; rename it")
    return name


def _checked_value(name: str, value: object, where: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if value is None:
        return math.nan
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise UserError(f"{where}: metric {name!r} is {type(value).__name__}, not a number")
    return float(value)
