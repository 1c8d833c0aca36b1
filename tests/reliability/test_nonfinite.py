"""NaN or Inf weights are refused when loading and flagged by inspect; NaN outputs stop evaluation
(issue #10, item 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import modelshrink
from modelshrink.cli import app
from modelshrink.errors import UserError
from modelshrink.metrics.accuracy import evaluate_outputs
from modelshrink.models.zoo import mlp
from tests.conftest import tiny_recipe, write_recipe

runner = CliRunner()
ARCH = {"factory": "modelshrink.models.zoo:mlp", "kwargs": {"in_features": 64, "hidden": 32}}


def poisoned_state_dict(tmp_path: Path) -> Path:
    state = mlp(**ARCH["kwargs"]).state_dict()
    name = next(k for k in state if k.endswith("weight"))
    state[name][0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    return path


def test_nan_weights_are_refused_by_run_and_flagged_by_inspect(tmp_path: Path) -> None:
    path = poisoned_state_dict(tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, model={**ARCH, "checkpoint": str(path)}))
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 2 and "1 tensor(s) hold NaN or Inf: 1.weight" in result.stderr
    assert not (tmp_path / "out").exists()
    assert modelshrink.inspect(path)["nonfinite"] == ["1.weight"]
    assert "NaN or Inf in 1 tensor(s): 1.weight" in runner.invoke(app, ["inspect", str(path)]).output


def test_nan_outputs_stop_evaluation() -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 3), float("nan"))

    batches = [(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))]
    with pytest.raises(UserError, match="outputs hold NaN or Inf"):
        evaluate_outputs(Broken(), batches)  # type: ignore[arg-type]
