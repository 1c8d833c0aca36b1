"""The one stage loop (`engine.start` + `engine.run_stages`): every command runs the same checks before any
stage, and the loop's hooks are all that differ between compress, run and tune."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from modelshrink.cli import app
from modelshrink.engine import Progress, StageHooks, compress, run_stages, start
from modelshrink.recipe.schema import EvaluateSpec
from modelshrink.recipe.stage_specs import parse_stage
from modelshrink.stages import StageContext
from tests.conftest import FAST_EVAL, tensor_data

runner = CliRunner()
SEARCHED = [{"kind": "prune", "amount": {"search": [0.2, 0.4]}}]


@pytest.mark.parametrize("command", ["run", "tune", "analyze"])
def test_every_command_refuses_a_model_that_does_not_fit_its_data(recipe_file, tmp_path: Path, command: str) -> None:
    """The model outputs 3 classes, the data has 10: one line, exit 2, nothing written, whichever command."""
    model = {"factory": "modelshrink.models.zoo:mlp", "kwargs": {"in_features": 64, "hidden": 16, "num_classes": 3}}
    stages = SEARCHED if command == "tune" else [{"kind": "prune", "method": "channel", "amount": 0.2}]
    result = runner.invoke(app, [command, str(recipe_file(model=model, stages=stages)), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().endswith("model outputs 3 classes but the data has 10; set model.num_classes: 10, "
                                          "or replace the classifier with a finetune stage's num_classes")  # fmt: skip
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["run", "tune"])
def test_a_gate_on_a_metric_nothing_returns_is_refused(recipe_file, tmp_path: Path, command: str) -> None:
    evaluate = {**FAST_EVAL, "metrics": ["tests.data.own:first_logit"]}
    stages = SEARCHED if command == "tune" else [{"kind": "prune", "amount": 0.2}]
    recipe = recipe_file(stages=stages, evaluate=evaluate, constraints={"mean_iuo": {"min": 0.5}})
    result = runner.invoke(app, [command, str(recipe), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "constraints.mean_iuo: no metric of that name" in result.stderr and not (tmp_path / "o").exists()


class _Recording(StageHooks):
    """Reuses stage 0 from an earlier loop and stops after stage 1."""

    def __init__(self, earlier: Progress):
        self.earlier, self.calls = earlier, []

    def reuse(self, index: int, progress: Progress) -> Progress | None:
        self.calls.append(("reuse", index))
        return self.earlier if index == 0 else None

    def before(self, index: int, progress: Progress) -> Progress:
        self.calls.append(("before", index))
        return progress

    def after(self, index: int, progress: Progress) -> bool:
        self.calls.append(("after", index))
        return index < 1


def test_hooks_reuse_a_stage_and_end_the_loop() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    data = tensor_data(torch.randn(16, 1, 4, 4), num_classes=4)
    evaluate = EvaluateSpec.model_validate(FAST_EVAL)
    specs = [parse_stage({"kind": "prune", "amount": a}) for a in (0.25, 0.5, 0.75)]
    first = compress(model, specs[:1], data=data, evaluate=FAST_EVAL)
    baseline = start(model, first.lineage, data, evaluate, specs)
    ctx = StageContext(data=data, original_model=model, lineage=first.lineage, evaluate=evaluate, seed=0)
    hooks = _Recording(Progress(first.model, first.lineage, first.stages))
    done = run_stages(Progress(model, first.lineage), specs, ctx, baseline, hooks)
    assert hooks.calls == [("reuse", 0), ("after", 0), ("reuse", 1), ("before", 1), ("after", 1)]
    assert [r.name for r in done.results] == ["prune1", "prune2"], "stage 0 reused, stage 2 never ran"
    assert done.results[0] is first.stages[0] and done.results[1].metrics["sparsity"] > 0.4
