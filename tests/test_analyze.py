"""`modelshrink analyze RECIPE` (issue #15): per-layer sensitivity on calibration data, written as
sensitivity.json/.md/.png, with suggestions a recipe accepts, within a time budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
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
    md = (out / "sensitivity.md").read_text()
    assert "| `10` | Conv2d |" in md
    if suggested["prune"]["amount"] is None:  # no ratio kept any layer within the drop: no prune stage offered
        assert suggested["prune"]["layer_amounts"] == {} and "no prune stage" in md
    else:
        stage = parse_stage({"kind": "prune", **suggested["prune"]})  # the suggestion is a valid stage
        assert stage.layer_amounts == suggested["prune"]["layer_amounts"] and "layer_amounts:" in md


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


def mobile_block() -> torch.nn.Module:
    """A stem and one inverted residual block (expand 1x1, depthwise 3x3, project 1x1), as MobileNets are."""

    def cbr(cin: int, cout: int, kernel: int, groups: int = 1) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        ]

    torch.manual_seed(0)
    return nn.Sequential(
        *cbr(1, 8, 3), *cbr(8, 32, 1), *cbr(32, 32, 3, groups=32), nn.Conv2d(32, 16, 1), nn.BatchNorm2d(16),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip


def test_depthwise_layers_are_probed_with_their_dependency_group_and_static_int8_per_layer(
    tmp_path: Path, recipe_file
) -> None:
    recipe = recipe_file(model={"factory": "tests.test_analyze:mobile_block"}, data=DIGITS, stages=[TRAIN[1]])
    out = tmp_path / "analysis"
    result = runner.invoke(app, ["analyze", str(recipe), "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads((out / "sensitivity.json").read_text())["layers"]}
    expand, depthwise = rows["3"], rows["6"]
    for row in (expand, depthwise):  # pruned with each other, as Torch-Pruning couples their channels
        assert {"channel 0.25", "channel 0.5", "channel 0.75"} <= set(row["drops"]), row["skipped"]
    assert all(0 <= row["drops"]["static int8"] <= 1 for row in rows.values())


def test_the_static_int8_probe_quantizes_one_layer_and_nothing_else() -> None:
    from modelshrink.analyze.probe import static_int8_of
    from modelshrink.lineage import Lineage
    from modelshrink.recipe.schema import EvaluateSpec
    from modelshrink.stages import StageContext
    from tests.conftest import FAST_EVAL, tensor_data

    model = mobile_block().eval()
    data = tensor_data(torch.randn(64, 1, 8, 8))
    ctx = StageContext(
        data=data, original_model=model, lineage=Lineage({}), evaluate=EvaluateSpec.model_validate(FAST_EVAL), seed=0
    )
    probed = static_int8_of("6")(model, ctx)
    quantized = {name for name, m in probed.named_modules() if "quantized" in type(m).__module__ and "." not in name}
    assert quantized == {"6"}, "the depthwise layer alone: no other layer, no residual add or head"


def test_the_budget_covers_every_layer_coarsely_before_refining(tmp_path: Path, trained_recipe: Path) -> None:
    from modelshrink.analyze import listed

    out = tmp_path / "analysis"
    result = runner.invoke(app, ["analyze", str(trained_recipe), "-o", str(out), "--budget-s", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "sensitivity.json").read_text())
    [row] = report["layers"]
    assert "channel 0.5" in row["drops"] | row["skipped"] and "channel 0.25" not in row["drops"] | row["skipped"]
    assert {"int8", "static int8"} <= set(row["drops"]) and report["not_refined"] == ["0"]
    assert "Measured at the middle ratio only (time budget of 0 s spent): `0`" in (out / "sensitivity.md").read_text()
    names = [f"layer{i}" for i in range(25)]
    assert listed(names).endswith("`layer19` and 5 more (sensitivity.json lists them all)")


def pooling_only() -> nn.Module:
    """No convolution or linear layer: nothing for pruning or quantization to change."""
    return nn.Sequential(nn.AdaptiveAvgPool2d((1, 10)), nn.Flatten())


def test_a_model_without_layers_to_probe_is_one_line_and_the_batches_reported_are_those_used(
    tmp_path: Path, recipe_file
) -> None:
    out = tmp_path / "sens"
    empty = recipe_file(model={"factory": "tests.test_analyze:pooling_only"}, stages=[])
    result = runner.invoke(app, ["analyze", str(empty), "-o", str(out)])
    assert result.exit_code == 2 and "no convolution or linear layer" in result.stderr, result.output
    assert not out.exists(), "nothing written"

    small = recipe_file(data={"kind": "synthetic", "channels": 1, "image_size": 8, "num_samples": 40, "batch_size": 32})
    result = runner.invoke(app, ["analyze", str(small), "-o", str(out), "--batches", "50", "--budget-s", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "sensitivity.json").read_text())
    assert 1 <= report["batches"] < 50, "the batches the data held, not those asked for"
