"""Search spaces in recipes: any value under `stages` may be `{search: [values]}` or
`{search: {min, max, step}}`; `modelshrink tune` tries the candidates, `run` refuses them.

Spaces live in stages only, so that every candidate shares the model, data and baseline that
`tune` measures once. A space is found in the raw YAML data before validation; each candidate is
the raw data with one value per space, validated like any recipe.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence
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
MAX_VALUES = 1000  # per space: a range that would expand past this is a mistake
MAX_TRIALS = 100_000  # each trial runs stages: more than this would run for months


def _values(path: str, space: Any) -> list[Any]:
    if isinstance(space, list) and space:
        return space
    if isinstance(space, dict) and set(space) == {"min", "max", "step"}:
        low, high, step = space["min"], space["max"], space["step"]
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high, step))
        if not numbers or step <= 0 or high < low:
            raise UserError(f"{path}: search {{min, max, step}} needs numbers with step > 0 and max >= min")
        count = int(round((high - low) / step, 9)) + 1
        if count > MAX_VALUES:
            raise UserError(f"{path}: the search range has {count:,} values (more than {MAX_VALUES:,})")
        integral = all(isinstance(v, int) for v in (low, high, step))
        return [low + i * step if integral else round(low + i * step, 10) for i in range(count)]
    raise UserError(f"{path}: search takes a non-empty list of values or {{min, max, step}}")


def find_spaces(parsed: RawRecipe) -> dict[Path, list[Any]]:
    """Every search space in the raw recipe, by its path; refused outside `stages`."""
    found: dict[Path, list[Any]] = {}
    for path, node in containers(parsed.data):
        if is_search_space(node):
            where = parsed.where(path)
            if not path or path[0] != "stages":
                raise UserError(f"{where}: search spaces are allowed under stages only (the baseline is shared)")
            found[tuple(path)] = _values(where, node["search"])
    return found


def first_values(spaces: dict[Path, list[Any]]) -> dict[Path, Any]:
    return {path: values[0] for path, values in spaces.items()}


def load_first_candidate(path: str | PathLike[str], overrides: Sequence[str] = ()) -> Recipe:
    """The recipe with every search space at its first value (a plain recipe as it is): what `analyze`
    reads of a recipe written for `tune`, whose searched values lie in stages it does not run."""
    parsed = parse_raw(read_recipe_text(path), str(path), overrides)
    return validate_raw(parsed, substitute(parsed.data, first_values(find_spaces(parsed))))


def check_values(parsed: RawRecipe, spaces: dict[Path, list[Any]]) -> Recipe:
    """Validate every value of every space (the others at their first value); returns the first candidate."""
    first = first_values(spaces)
    recipe = validate_raw(parsed, substitute(parsed.data, first))
    for path, values in spaces.items():
        for value in values[1:]:
            validate_raw(parsed, substitute(parsed.data, {**first, path: value}))
    return recipe


def candidates(spaces: dict[Path, list[Any]], max_trials: int, seed: int) -> list[dict[Path, Any]]:
    """Every combination, or `max_trials` of them drawn without repeats (seeded) when there are more:
    drawn by number, so 4 spaces of 1000 values (10^12 combinations) are never enumerated."""
    if max_trials > MAX_TRIALS:
        raise UserError(f"--max-trials: at most {MAX_TRIALS:,} (each trial runs the recipe's stages)")
    total = math.prod(len(values) for values in spaces.values())
    numbers = range(total) if total <= max_trials else sorted(random.Random(seed).sample(range(total), max_trials))
    return [_combination(spaces, number) for number in numbers]


def _combination(spaces: dict[Path, list[Any]], number: int) -> dict[Path, Any]:
    """Combination `number`: its digits in the mixed radix of the spaces' sizes, the last space counting
    fastest (the order of `itertools.product`)."""
    combo = {}
    for path in reversed(list(spaces)):
        number, digit = divmod(number, len(spaces[path]))
        combo[path] = spaces[path][digit]
    return {path: combo[path] for path in spaces}


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
