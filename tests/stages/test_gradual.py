"""Gradual pruning in one stage (issue #27, item 3): sparsity rises along the schedule's curve with
training between steps, the stage ends at `amount`, keeps each step's best epoch, and reports the curve."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torch import nn
from typer.testing import CliRunner

from modelshrink.cli import app
from modelshrink.engine import compress
from modelshrink.recipe.recipe import Recipe
from modelshrink.recipe.stage_specs import PruneSchedule, parse_stage
from modelshrink.stages.prune.gradual import sparsity_at, zero_fraction
from tests.conftest import FAST_EVAL, reload

CNN = {"factory": "modelshrink.models.zoo:small_cnn", "kwargs": {"in_channels": 3, "width": 8}}
DIGITS = {"kind": "digits", "image_size": 8, "channels": 3, "batch_size": 64}
SHORT = {"lr": 0.01, "max_batches_per_epoch": 3}


def test_the_cubic_curve_rises_fast_then_gently_and_ends_at_the_amount() -> None:
    cubic, linear = PruneSchedule(epochs=5), PruneSchedule(kind="linear", epochs=5)
    path = [sparsity_at(cubic, 0.1, 0.9, step) for step in range(1, 6)]
    assert path == sorted(path) and path[-1] == pytest.approx(0.9)
    assert path[0] == pytest.approx(0.9 - 0.8 * (1 - 1 / 5) ** 3)  # Zhu & Gupta
    assert path[0] > sparsity_at(linear, 0.1, 0.9, 1)
    steps = [b - a for a, b in zip([0.1, *path], path, strict=False)]
    assert steps == sorted(steps, reverse=True), "each cubic step prunes less than the one before"


@pytest.mark.parametrize("train", [{"kind": "finetune", **SHORT}, {"kind": "distill", **SHORT}])
def test_a_schedule_reaches_the_amount_with_training_between_steps(train: dict) -> None:
    stage = {"kind": "prune", "amount": 0.8, "schedule": {"epochs": 3, "frequency": 1, "train": train}}
    result = compress(CNN, [stage], data=DIGITS, evaluate=FAST_EVAL)
    layers = [m for m in result.model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert zero_fraction(layers) == pytest.approx(0.8, abs=2e-3)
    notes = result.stages[0].notes
    assert [run.label for run in notes.training] == [f"prune1 step {k}/3" for k in (1, 2, 3)]
    assert all(run.epochs_run == 1 for run in notes.training)
    curve = next(f for f in notes.findings if f.startswith("gradual pruning (cubic, 3 steps over 3 epochs)"))
    shown = [float(s) for s in re.findall(r"([\d.]+)% →", curve)]
    assert len(shown) == 3 and shown == sorted(shown) and shown[-1] == pytest.approx(80.0, abs=0.2)
    rebuilt = reload(result)
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(rebuilt(x), result.model(x))


def test_frequency_trains_several_epochs_per_step_and_the_last_step_takes_the_rest() -> None:
    schedule = {"epochs": 5, "frequency": 2, "train": {"kind": "finetune", **SHORT}}
    result = compress(CNN, [{"kind": "prune", "amount": 0.5, "schedule": schedule}], data=DIGITS, evaluate=FAST_EVAL)
    assert [run.epochs_run for run in result.stages[0].notes.training] == [2, 2, 1]


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ({"epochs": 4, "train": {"kind": "finetune", "epochs": 2}}, "schedule.train takes no epochs"),
        ({"epochs": 4, "train": {"kind": "finetune", "num_classes": 3}}, "cannot replace the classifier"),
        ({"epochs": 2, "frequency": 3}, "frequency 3 is more than the schedule's 2 epochs"),
        ({"epochs": 2, "train": {"kind": "prune", "amount": 0.5}}, "finetune', 'distill'"),
    ],
)
def test_a_schedule_that_cannot_run_is_refused(schedule: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_stage({"kind": "prune", "amount": 0.9, "schedule": schedule})


def test_a_teacher_named_inside_a_schedule_is_an_input_no_output_may_overwrite(tmp_path: Path) -> None:
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"")
    schedule = {"epochs": 2, "train": {"kind": "distill", "teacher": {"checkpoint": str(teacher)}}}
    recipe = Recipe.model_validate({"model": {"torchvision": "resnet18"}, "data": {"kind": "digits"},
                                    "stages": [{"kind": "prune", "amount": 0.5, "schedule": schedule}],
                                    "output": {"dir": str(tmp_path / "out")}})  # fmt: skip
    assert ("teacher checkpoint", teacher) in recipe.inputs()


@pytest.mark.slow  # ~3 min on 2 cores: trains the digits ResNet-18, then prunes it to 90% in 5 steps
def test_the_bundled_gradual_recipe_keeps_the_digits_resnet18_within_half_a_point(tmp_path: Path) -> None:
    recipes = Path(__file__).parents[2] / "recipes"
    base, out = tmp_path / "base", tmp_path / "gradual"
    trained = CliRunner().invoke(app, ["run", str(recipes / "digits_resnet18_baseline.yaml"), "-o", str(base)])
    assert trained.exit_code == 0, trained.output
    ran = CliRunner().invoke(app, ["run", str(recipes / "digits_resnet18_gradual90.yaml"), "-o", str(out),
                                   "--set", f"model.checkpoint={base / 'model.pt'}"])  # fmt: skip
    assert ran.exit_code == 0, ran.output  # the recipe's gate: at most 0.5 points below the baseline
    report = json.loads((out / "report.json").read_text())
    assert report["final"]["sparsity"] > 0.89
    assert report["baseline"]["accuracy"] - report["final"]["accuracy"] <= 0.005
    assert (out / "model.pt").stat().st_size < 0.2 * (base / "model.pt").stat().st_size
