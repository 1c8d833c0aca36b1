"""The user's own metrics: `evaluate.metrics: ["pkg.module:fn"]`, each `fn(model, val_loader)`
returning `{name: float}`, or a plug-in's metric kind (`{kind: ...}`, its handler registered by spec
type, `modelshrink.registry`). A loader item is what the data yields: `(inputs, targets)`.

The values land in `Metrics["custom"]` and from there in report.json, report.md, the CLI table and
the gates (`constraints: {map50: {max_drop: 0.01}}`), through descriptors made from their names
(`descriptors.custom_descriptor`). A value that is not defined is NaN (null), as for built-in metrics.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from modelshrink.descriptors import METRICS
from modelshrink.errors import UserError
from modelshrink.recipe.schema import BaseMetricSpec, CustomMetricSpec
from modelshrink.registry import METRICS as METRIC_HANDLERS
from modelshrink.registry import register
from modelshrink.user_code import resolve, run_user_code


def custom_metrics(model: nn.Module, loader: DataLoader, specs: Sequence[BaseMetricSpec]) -> dict[str, float]:
    """Every metric of `evaluate.metrics` on the validation loader, by the name each returns."""
    values: dict[str, float] = {}
    for index, spec in enumerate(specs):
        where = f"evaluate.metrics[{index}]"
        model.eval()
        with torch.inference_mode():
            result = METRIC_HANDLERS.handler_for(spec)(spec, model, loader, where)
        if not isinstance(result, dict) or not result:
            raise UserError(f"{where}: {_label(spec)} returned {type(result).__name__}, not a {{name: value}} dict")
        for name, value in result.items():
            values[_checked_name(name, values, where)] = _checked_value(name, value, where)
    return values


@register(CustomMetricSpec)
def python_metric(spec: CustomMetricSpec, model: nn.Module, loader: DataLoader, where: str) -> Any:
    """The user's function, named in the recipe."""
    return run_user_code(resolve(spec.function, where), spec.function, where, model, loader)


def _label(spec: BaseMetricSpec) -> str:
    return spec.function if isinstance(spec, CustomMetricSpec) else f"metric kind {getattr(spec, 'kind', '?')!r}"


def directions(specs: Sequence[BaseMetricSpec], values: dict[str, float]) -> dict[str, str]:
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
