"""Search spaces in recipes: any value under `stages` may be `{search: [values]}` or
`{search: {min, max, step}}`; `modelshrink tune` samples candidates from them, `run` refuses them.

Spaces live in stages only, so that every candidate shares the model, data and baseline that
`tune` measures once. A space is found in the raw YAML data before validation; each candidate is
the raw data with one value per space, validated like any recipe.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from typing import Any

from modelshrink.errors import UserError
from modelshrink.recipe.parse import (
    RawRecipe,
    containers,
    format_path,
    is_search_space,
    parse_raw,
    read_recipe_text,
    validate_raw,
)
from modelshrink.recipe.recipe import Recipe

Path = tuple[str | int, ...]
MAX_LIST = 100_000  # values in one listed space: a longer list is a mistake (a range is never expanded)


@dataclass(frozen=True)
class Space:
    """One search space: listed values, or a numeric range `{min, max, step}` that is never expanded
    (4 ranges of 10^6 values each are 10^24 candidates; a sampler draws from them by number)."""

    choices: tuple[Any, ...] = ()
    low: float = 0
    high: float = 0
    step: float = 1
    integral: bool = False

    @property
    def size(self) -> int:
        return len(self.choices) if self.choices else int(round((self.high - self.low) / self.step, 9)) + 1

    def value(self, index: int) -> Any:
        if self.choices:
            return self.choices[index]
        return self.low + index * self.step if self.integral else round(self.low + index * self.step, 10)

    def index(self, value: Any) -> int | None:
        """Where `value` lies in this space; None when it is not one of its values."""
        if self.choices:
            return next((i for i, c in enumerate(self.choices) if type(c) is type(value) and c == value), None)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        index = round((value - self.low) / self.step)
        return index if 0 <= index < self.size and self.value(index) == value else None

    def checked(self) -> list[Any]:
        """The values validated before a search starts: every listed one, a range's two ends (a recipe's
        bounds are intervals, so the values between them pass when the ends do)."""
        return list(self.choices) if self.choices else [self.low, self.value(self.size - 1)]


def _space(path: str, space: Any) -> Space:
    if isinstance(space, list) and space:
        if len(space) > MAX_LIST:
            raise UserError(f"{path}: the search lists {len(space):,} values (more than {MAX_LIST:,}); use a range")
        return Space(choices=tuple(space))
    if isinstance(space, dict) and set(space) == {"min", "max", "step"}:
        low, high, step = space["min"], space["max"], space["step"]
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high, step))
        if not numbers or not all(map(math.isfinite, (low, high, step))) or step <= 0 or high < low:
            raise UserError(f"{path}: search {{min, max, step}} needs numbers with step > 0 and max >= min")
        return Space(low=low, high=high, step=step, integral=all(isinstance(v, int) for v in (low, high, step)))
    raise UserError(f"{path}: search takes a non-empty list of values or {{min, max, step}}")


def find_spaces(parsed: RawRecipe) -> dict[Path, Space]:
    """Every search space in the raw recipe, by its path; refused outside `stages`."""
    found: dict[Path, Space] = {}
    for path, node in containers(parsed.data):
        if is_search_space(node):
            where = parsed.where(path)
            if not path or path[0] != "stages":
                raise UserError(f"{where}: search spaces are allowed under stages only (the baseline is shared)")
            found[tuple(path)] = _space(where, node["search"])
    return found


def first_values(spaces: dict[Path, Space]) -> dict[Path, Any]:
    return {path: space.value(0) for path, space in spaces.items()}


def load_first_candidate(path: str | PathLike[str], overrides: Sequence[str] = ()) -> Recipe:
    """The recipe with every search space at its first value (a plain recipe as it is): what `analyze`
    reads of a recipe written for `tune`, whose searched values lie in stages it does not run."""
    parsed = parse_raw(read_recipe_text(path), str(path), overrides)
    return validate_raw(parsed, substitute(parsed.data, first_values(find_spaces(parsed))))


def check_values(parsed: RawRecipe, spaces: dict[Path, Space]) -> Recipe:
    """Validate each space's `checked` values (the others at their first value); returns the first candidate."""
    first = first_values(spaces)
    recipe = validate_raw(parsed, substitute(parsed.data, first))
    for path, space in spaces.items():
        for value in space.checked()[1:]:
            validate_raw(parsed, substitute(parsed.data, {**first, path: value}))
    return recipe


def combinations(spaces: dict[Path, Space]) -> int:
    return math.prod(space.size for space in spaces.values())


def substitute(data: dict[str, Any], choice: dict[Path, Any]) -> dict[str, Any]:
    """The raw recipe with each space replaced by its chosen value. The spaces themselves are not copied
    (deepcopy's memo stands in for them): copying every space's values per candidate was quadratic."""
    memo: dict[int, Any] = {id(_node(data, path)): None for path in choice}
    out = copy.deepcopy(data, memo)
    for path, value in choice.items():
        _node(out, path[:-1])[path[-1]] = copy.deepcopy(value)
    return out


def _node(data: Any, path: Path) -> Any:
    for part in path:
        data = data[part]
    return data


def label(choice: dict[Path, Any]) -> str:
    return ", ".join(f"{format_path(path)}={value}" for path, value in choice.items())
