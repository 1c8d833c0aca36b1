"""Property-based fuzzing of the recipe loader and `--set`: any text or override gives a valid Recipe
or a UserError, never another exception (issue #10)."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from modelshrink.errors import UserError
from modelshrink.recipe.parse import parse_recipe
from modelshrink.recipe.recipe import Recipe
from tests.recipe.test_errors import VALID

FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
yaml_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
KEYS = ["model", "data", "stages", "output", "evaluate", "constraints", "seed", "name", "model.checkpoint"]
KEYS += ["stages[0].amount", "stages[1]", "data.kind", "output.dir", "model.kwargs.x", "stages.0.epochs"]


def outcome(text: str, overrides: list[str] = ()) -> None:
    try:
        assert isinstance(parse_recipe(text, "fuzz.yaml", overrides), Recipe)
    except UserError as exc:
        assert str(exc).strip(), "a user error always says something"


@FUZZ
@given(st.text(max_size=400))
def test_any_text_gives_a_recipe_or_a_user_error(text: str) -> None:
    outcome(text)


@FUZZ
@given(yaml_values)
def test_any_yaml_document_gives_a_recipe_or_a_user_error(value: object) -> None:
    outcome(yaml.safe_dump(value))


@FUZZ
@given(st.sampled_from(KEYS) | st.text(max_size=30), st.text(max_size=40))
@example(key="¹", value="")  # found by this test: "¹".isdigit() is true, but int("¹") fails
def test_any_override_gives_a_recipe_or_a_user_error(key: str, value: str) -> None:
    outcome(VALID, [f"{key}={value}"])


@FUZZ
@given(st.sampled_from(KEYS), yaml_values)
def test_any_yaml_value_override_gives_a_recipe_or_a_user_error(key: str, value: object) -> None:
    outcome(VALID, [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"])
