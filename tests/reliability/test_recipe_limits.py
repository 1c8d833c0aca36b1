"""Hostile or careless recipes are rejected with one line, in bounded time and memory (issue #10, items 3, 4, 7)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from modelshrink.errors import UserError
from modelshrink.recipe.parse import MAX_RECIPE_BYTES, load_recipe, parse_recipe
from tests.recipe.test_errors import VALID, errors_of


def test_duplicate_keys_are_rejected_naming_both_lines() -> None:
    text = VALID.replace("  num_classes: 10\n", "  num_classes: 10\n  num_classes: 7\n")
    assert errors_of(text) == "r.yaml:4 key 'num_classes' is given twice (also line 3)"


def test_an_alias_bomb_is_rejected_without_expanding_it() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = VALID.replace("  num_classes: 10\n", "  num_classes: 10\n  kwargs:\n" + "".join(f"    {x}\n" for x in lines))
    start = time.perf_counter()
    assert "expands to more than 100,000 values" in errors_of(bomb)
    assert time.perf_counter() - start < 5, "rejected before the 10^9 values are built"


def test_a_huge_recipe_file_is_rejected_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(VALID + "#" * (MAX_RECIPE_BYTES + 1) + "\n")
    with pytest.raises(UserError, match="larger than"):
        load_recipe(path)


def test_an_unparseable_set_value_is_an_error_not_a_string() -> None:
    assert "is not valid YAML" in errors_of(VALID, ["stages[1].amount=[0.3"])
    assert parse_recipe(VALID, overrides=["stages[1].amount=0.4"]).stages[1].amount == 0.4


def test_a_seed_beyond_64_bits_is_rejected_by_validate() -> None:
    assert "seed" in errors_of(VALID + "seed: 99999999999999999999999\n")
