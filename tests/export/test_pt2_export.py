"""`export: [{format: pt2}]`: the final model (quantized or not) as an AOTInductor package that another
process loads and runs without compiling, validated and measured like any export (issue #14)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import modelshrink.export.pt2 as pt2
from modelshrink.cli import app
from modelshrink.errors import UserError
from modelshrink.export import export
from modelshrink.recipe.export_specs import Pt2Export
from tests.conftest import tensor_data

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
CNN = {"factory": "modelshrink.models.zoo:small_cnn", "kwargs": {"in_channels": 1, "width": 8}}
RUN_PACKAGE = """
import sys, torch, modelshrink
package = torch._inductor.aoti_load_package(sys.argv[1])
x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    torch.save((package(x), modelshrink.load(sys.argv[2])(x)), sys.argv[3])
"""


def package_and_checkpoint_outputs(out: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The package and the checkpoint, each run in a new interpreter on a batch size the run never used."""
    result = out / "outputs.pt"
    args = [str(out / "model.pt2"), str(out / "model.pt"), str(result)]
    subprocess.run([sys.executable, "-c", RUN_PACKAGE, *args], check=True, cwd=REPO, capture_output=True)
    return torch.load(result)


@pytest.mark.parametrize(
    "stages",
    [
        [{"kind": "prune", "method": "channel", "amount": 0.5}],
        pytest.param(  # ~45 s on 2 cores (compiling twice): in the full suite only
            [{"kind": "quantize", "mode": "static", "backend": "pt2e", "calibration_batches": 2}],
            marks=pytest.mark.slow,
        ),
    ],
    ids=["pruned float", "pt2e int8"],
)
def test_the_final_model_packages_and_runs_in_a_fresh_process(tmp_path: Path, recipe_file, stages) -> None:
    result = runner.invoke(
        app, ["run", str(recipe_file(model=CNN, stages=stages, export=[{"format": "pt2"}])), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    [entry] = report["exports"]
    final = report["stages"][-1]
    assert entry["source"] == final["name"], "a .pt2 package is the final model, as the stages left it"
    assert entry["file"] == "model.pt2" and entry["quantize"] is None
    assert entry["validation"]["cosine"] > 0.999
    assert entry["metrics"]["macs"] == final["metrics"]["macs"]
    assert entry["metrics"]["latency_ms"]["batch1_median"] > 0, "batch 1 and batch N: the batch axis is dynamic"
    from_package, from_checkpoint = package_and_checkpoint_outputs(tmp_path / "out")
    cosine = nn.functional.cosine_similarity(from_package, from_checkpoint, dim=1)
    assert from_package.shape == (3, 10) and cosine.min() > 0.999


class FixedBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.reshape(2, 64))  # only ever batch 2


def test_a_model_whose_code_fixes_the_batch_is_refused_in_one_line() -> None:
    data = tensor_data(torch.randn(8, 1, 8, 8), batch_size=2)
    with pytest.raises(UserError, match="its code fixes the batch size"):
        export(FixedBatch(), Pt2Export(format="pt2"), data, [], 2)


def test_a_package_whose_freezing_changed_the_outputs_is_rebuilt_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    built = []
    real_package = pt2.package
    monkeypatch.setattr(
        pt2, "package", lambda program, path, freezing: built.append(freezing) or real_package(program, path, freezing)
    )
    scores = iter([0.3])
    monkeypatch.setattr(pt2, "cosine", lambda outputs, expected: next(scores, 1.0))
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    exported = export(model, Pt2Export(format="pt2"), tensor_data(torch.randn(8, 1, 8, 8)), [], 2)
    assert built == [True, False]
    assert exported.notes == ["packaged without inductor's freezing: with it, outputs had cosine 0.300"]
    x = torch.randn(5, 1, 8, 8)
    assert torch.allclose(exported.runtime(x), model(x), atol=1e-5)


def test_export_command_packages_a_checkpoint_and_refuses_a_quantize_option(tmp_path: Path, recipe_file) -> None:
    assert runner.invoke(app, ["run", str(recipe_file())]).exit_code == 0
    checkpoint = tmp_path / "out" / "model.pt"
    refused = runner.invoke(app, ["export", str(checkpoint), "--format", "pt2", "--quantize", "int8"])
    assert refused.exit_code == 2 and "--quantize: Extra inputs are not permitted" in refused.output
    result = runner.invoke(app, ["export", str(checkpoint), "--format", "pt2"])
    assert result.exit_code == 0, result.output
    package = torch._inductor.aoti_load_package(str(tmp_path / "out" / "model.pt2"))
    x = torch.randn(4, 1, 8, 8)
    from modelshrink import load

    with torch.no_grad():
        assert torch.allclose(package(x), load(checkpoint)(x), atol=1e-4)
