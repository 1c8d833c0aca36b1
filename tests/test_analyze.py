"""`modelshrink analyze RECIPE` (issue #15): per-layer sensitivity on calibration data, written as
sensitivity.json/.md/.png, with suggestions a recipe accepts, within a time budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelshrink.analyze.probe import LayerSensitivity
from modelshrink.analyze.suggest import suggestions
from modelshrink.cli import app
from modelshrink.recipe.stage_specs import parse_stage

runner = CliRunner()
CNN = {"factory": "modelshrink.models.zoo:small_cnn", "kwargs": {"in_channels": 1, "width": 8}}
DIGITS = {"kind": "digits", "image_size": 8, "channels": 1, "batch_size": 32}
TRAIN = [{"kind": "finetune", "epochs": 2, "lr": 0.01}, {"kind": "prune", "method": "channel", "amount": 0.3}]


@pytest.fixture
def trained_recipe(recipe_file) -> Path:
    return recipe_file(model=CNN, data=DIGITS, stages=TRAIN)


def test_analyze_writes_sensitivities_of_the_trained_model_and_suggestions_a_recipe_accepts(
    tmp_path: Path, trained_recipe: Path
) -> None:
    out = tmp_path / "analysis"
    result = runner.invoke(app, ["analyze", str(trained_recipe), "-o", str(out), "--max-drop", "0.02"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "5 layers" in result.output
    assert {p.name for p in out.iterdir()} >= {"sensitivity.json", "sensitivity.md"}
    report = json.loads((out / "sensitivity.json").read_text())
    assert report["trained_first"] == ["finetune1"], "the model the compressing stages would get"
    rows = {row["name"]: row for row in report["layers"]}
    assert list(rows) == ["0", "3", "7", "10", "15"] and report["not_measured"] == []
    assert "channel 0.5" in rows["15"]["skipped"], "channel pruning keeps the classifier; the reason is kept"
    assert set(rows["15"]["drops"]) >= {"int8", "int4", "unstructured 0.75"}
    drops = [d for row in rows.values() for d in row["drops"].values()]
    assert all(0 <= d <= 1 for d in drops) and max(drops) > 0.02, "a trained model feels some of it"
    suggested = report["suggestions"]
    for name, ratio in suggested["prune"]["layer_amounts"].items():
        fitting = [float(k.split()[1]) for k, d in rows[name]["drops"].items() if k.startswith("channel") and d <= 0.02]
        assert ratio == max(fitting)
    stage = parse_stage({"kind": "prune", **suggested["prune"]})  # the suggestion is a valid stage
    assert stage.layer_amounts == suggested["prune"]["layer_amounts"]
    md = (out / "sensitivity.md").read_text()
    assert "| `10` | Conv2d |" in md and "layer_amounts:" in md


def test_the_budget_stops_early_and_what_was_measured_is_still_written(tmp_path: Path, trained_recipe: Path) -> None:
    out = tmp_path / "analysis"
    result = runner.invoke(app, ["analyze", str(trained_recipe), "-o", str(out), "--budget-s", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "sensitivity.json").read_text())
    assert len(report["layers"]) == 1 and len(report["not_measured"]) == 4, "the first layer, then the budget was spent"
    assert "Not measured (time budget of 0 s spent)" in (out / "sensitivity.md").read_text()
    again = runner.invoke(app, ["analyze", str(trained_recipe), "-o", str(out)])
    assert again.exit_code == 2 and "already exists; pass --force to replace it" in again.output
    other = tmp_path / "taken"
    other.mkdir()
    refused = runner.invoke(app, ["analyze", str(trained_recipe), "-o", str(other), "--force"])
    assert refused.exit_code == 2 and "choose a new one" in refused.output, "--force replaces only an analysis"


def test_suggestions_take_the_largest_fitting_ratio_and_exclude_what_fits_none() -> None:
    rows = [
        LayerSensitivity("a", "Conv2d", 10, {"channel 0.25": 0.001, "channel 0.5": 0.004, "channel 0.75": 0.2}),
        LayerSensitivity("b", "Conv2d", 10, {"channel 0.25": 0.05, "int8": 0.03}),
        LayerSensitivity("c", "Linear", 10, {"int8": 0.0, "int4": 0.002}, {"channel 0.25": "keeps the classifier"}),
    ]
    suggested = suggestions(rows, max_drop=0.005)
    assert suggested["prune"] == {"method": "channel", "amount": 0.5, "layer_amounts": {"a": 0.5}, "exclude": ["b"]}
    assert suggested["quantize"] == {"exclude": ["b"]} and suggested["int4_fits"] == ["c"]
