"""The recipe's schema is the one source of every key: every field is described, the reference page and
the JSON Schema files in docs/ are what `modelshrink schema` writes today, and every bundled recipe names
the schema its editor should check it with, and passes that check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from modelshrink.cli import app
from modelshrink.recipe import export_specs, recipe, reference, schema, stage_specs

ROOT = Path(__file__).resolve().parents[1]
GENERATED = {
    "docs/reference/recipe.md": ["schema", "--markdown"],
    "docs/recipe.schema.json": ["schema"],
    "docs/tune-recipe.schema.json": ["schema", "--tune"],
}
REGENERATE = "; regenerate with: " + "; ".join(
    f"modelshrink {' '.join(args)} > {path}" for path, args in GENERATED.items()
)


def test_every_recipe_field_says_what_it_is() -> None:
    undescribed = [
        f"{cls.__module__}.{cls.__name__}.{name}"
        for module in (schema, stage_specs, export_specs, recipe)
        for cls in vars(module).values()
        if isinstance(cls, type) and issubclass(cls, BaseModel) and cls.__module__ == module.__name__
        for name, field in cls.model_fields.items()
        if not field.description
    ]
    assert undescribed == [], "give each a Field(description=...): the docs are generated from it"


@pytest.mark.parametrize("path", sorted(GENERATED))
def test_the_generated_docs_are_current(path: str) -> None:
    result = CliRunner().invoke(app, GENERATED[path])
    assert result.exit_code == 0, result.output
    assert (ROOT / path).read_text() == result.stdout, f"{path} is stale{REGENERATE}"


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_each_bundled_recipe_names_its_schema_and_passes_it(path: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    text = path.read_text()
    tune = "search:" in text
    wanted = f"# yaml-language-server: $schema=../docs/{'tune-' if tune else ''}recipe.schema.json"
    assert text.splitlines()[0] == wanted
    jsonschema.validate(yaml.safe_load(text), json.loads((ROOT / wanted.split("=")[1].removeprefix("../")).read_text()))


def test_the_schema_refuses_what_the_recipe_loader_refuses() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    strict = reference.json_schema()
    recipe_ = {"model": {"torchvision": "resnet18"}, "data": {"kind": "digits"}, "output": {"dir": "out"},
               "stages": [{"kind": "prune", "amount": 0.5}]}  # fmt: skip
    jsonschema.validate(recipe_, strict)
    for broken in (
        {**recipe_, "stagse": []},  # an unknown key
        {**recipe_, "stages": [{"kind": "prune", "amount": "half"}]},  # a wrong type
        {**recipe_, "stages": [{"kind": "prune", "amount": {"search": [0.3, 0.5]}}]},  # a space, for run
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, strict)
    jsonschema.validate(
        {**recipe_, "stages": [{"kind": "prune", "amount": {"search": [0.3, 0.5]}}]}, reference.json_schema(True)
    )
    jsonschema.validate({**recipe_, "model": {"huggingface": "pkg.module:fn"}}, strict)  # a section's shorthand
