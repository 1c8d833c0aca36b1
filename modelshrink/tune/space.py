"""A recipe's search spaces as Optuna distributions, and a trial's parameters back as a candidate.

Listed values become a categorical distribution (of their indices when a value is not a plain scalar,
e.g. a list of layer names: Optuna's categorical choices are scalars), a `{min, max, step}` range an
int or float distribution with that step: nothing is enumerated up front, so a space of 10^12
candidates costs what one of ten does. Parameters read back from a storage are someone's data: each
must be a value of its space, or the trial is not a candidate of this recipe.
"""

from __future__ import annotations

from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from modelshrink.recipe.parse import format_path
from modelshrink.recipe.search import Path, Space

_SCALARS = (type(None), bool, int, float, str)


def _by_index(space: Space) -> bool:
    return bool(space.choices) and not all(type(choice) in _SCALARS for choice in space.choices)


def distribution(space: Space) -> BaseDistribution:
    if space.choices:
        return CategoricalDistribution(list(range(space.size)) if _by_index(space) else list(space.choices))
    last = space.value(space.size - 1)  # the range's own last value: Optuna wants (high - low) in whole steps
    if space.integral:
        return IntDistribution(int(space.low), int(last), step=int(space.step))
    return FloatDistribution(float(space.low), float(last), step=float(space.step))


def distributions(spaces: dict[Path, Space]) -> dict[str, BaseDistribution]:
    """The distributions, named as the recipe spells each path (`stages[0].amount`): what a dashboard shows."""
    return {format_path(path): distribution(space) for path, space in spaces.items()}


def grid(spaces: dict[Path, Space]) -> dict[str, list[Any]]:
    """Every parameter value, for Optuna's GridSampler (only for a space small enough to run whole)."""
    return {
        format_path(path): list(range(space.size)) if _by_index(space) else [space.value(i) for i in range(space.size)]
        for path, space in spaces.items()
    }


def choice_of(spaces: dict[Path, Space], params: dict[str, Any]) -> dict[Path, Any] | None:
    """The candidate a trial's parameters name; None when one is missing or not a value of its space."""
    choice = {}
    for path, space in spaces.items():
        value = params.get(format_path(path))
        if _by_index(space):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < space.size:
                return None
            value = space.choices[value]
        elif isinstance(value, float) and not space.choices:
            value = int(value) if space.integral and value.is_integer() else round(value, 10)
        if space.index(value) is None:
            return None
        choice[path] = value
    return choice if len(params) == len(spaces) else None
