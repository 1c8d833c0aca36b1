"""A checkpoint cannot make the tool import or call anything the user did not trust (issue #10, item 1)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import modelshrink
from modelshrink.checkpoint import to_bytes
from modelshrink.cli import app
from modelshrink.errors import UserError
from modelshrink.lineage import Lineage
from modelshrink.loading import load_model
from modelshrink.recipe.schema import ModelSpec

runner = CliRunner()


def hostile_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """Only dicts, strings and tensors (it passes weights_only), naming os:system as its factory."""
    marker = tmp_path / "pwned"
    path = tmp_path / "ck.pt"
    payload = {
        "format": "modelshrink",
        "format_version": 1,
        "architecture": {"factory": "os:system", "kwargs": {"command": f"touch {marker}"}},
        "transforms": [],
        "input_shape": [1, 8, 8],
        "state_dict": {"0.weight": torch.ones(4, 64), "0.bias": torch.zeros(4)},
    }
    torch.save(payload, path)
    return path, marker


def test_loading_a_checkpoint_never_runs_an_untrusted_factory(tmp_path: Path) -> None:
    path, marker = hostile_checkpoint(tmp_path)
    with pytest.raises(UserError, match=r"names the factory 'os:system'.*--trust os"):
        modelshrink.load(path)
    with pytest.raises(UserError, match="--trust os"):
        load_model(ModelSpec(checkpoint=path))
    info = modelshrink.inspect(path)  # still useful: the layers come from the state_dict
    assert info["untrusted_factory"] == "os:system" and info["totals"]["params"] == 4 * 64 + 4
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0 and "not trusted, so not imported" in result.output
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{checkpoint: {path}}}\ndata: {{kind: synthetic, channels: 1, image_size: 8, num_samples: 16}}\n"
        f"output: {{dir: {tmp_path / 'out'}}}\n"
    )
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 2 and "--trust os" in result.output
    assert not marker.exists(), "nothing named inside the file ran"
    assert not (tmp_path / "out").exists()


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_a_trusted_or_recipe_named_factory_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "userzoo.py").write_text(
        "from tests.reliability.test_checkpoint_trust import Tiny\n\ndef tiny():\n    return Tiny()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "userzoo", raising=False)
    model = Tiny().eval()
    path = tmp_path / "user.pt"
    path.write_bytes(to_bytes(model, Lineage({"factory": "userzoo:tiny", "kwargs": {}}), (1, 8, 8)))
    x = torch.randn(2, 1, 8, 8)

    with pytest.raises(UserError, match="--trust userzoo"):
        modelshrink.load(path)
    assert torch.equal(modelshrink.load(path, trust=["userzoo"])(x), model(x))
    built, _ = load_model(ModelSpec(factory="userzoo:tiny", checkpoint=path))  # the recipe named it: trusted
    assert torch.equal(built(x), model(x))
    assert modelshrink.inspect(path, trust=["userzoo"])["macs"] == 64 * 10
    assert runner.invoke(app, ["inspect", str(path), "--trust", "userzoo"]).exit_code == 0
    # our own zoo needs no trust
    zoo = tmp_path / "zoo.pt"
    arch = {"factory": "modelshrink.models.zoo:mlp", "kwargs": {"in_features": 64, "hidden": 8}}
    from modelshrink.models import build_architecture

    zoo.write_bytes(to_bytes(build_architecture(arch), Lineage(arch), (1, 8, 8)))
    assert isinstance(modelshrink.load(zoo), nn.Module)


@pytest.mark.parametrize("command", ["tune", "analyze"])
def test_tune_and_analyze_build_a_factory_only_when_trusted(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "userzoo2.py").write_text(
        "from tests.reliability.test_checkpoint_trust import Tiny\n\ndef tiny():\n    return Tiny()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "userzoo2", raising=False)
    path = tmp_path / "user.pt"
    path.write_bytes(to_bytes(Tiny().eval(), Lineage({"factory": "userzoo2:tiny", "kwargs": {}}), (1, 8, 8)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model: {{checkpoint: {path}}}\ndata: {{kind: synthetic, channels: 1, image_size: 8, num_samples: 32}}\n"
        "stages: [{kind: prune, method: unstructured, amount: {search: [0.1, 0.2]}}]\n"
        "evaluate: {latency: {batch_size: 2, warmup: 0, iterations: 1}}\n"
        f"output: {{dir: {tmp_path / 'out'}}}\n"
    )
    out = tmp_path / "result"
    refused = runner.invoke(app, [command, str(recipe), "-o", str(out)])
    assert refused.exit_code == 2 and "--trust userzoo2" in refused.output
    assert not out.exists()
    trusted = runner.invoke(app, [command, str(recipe), "-o", str(out), "--trust", "userzoo2"])
    assert trusted.exit_code == 0, trusted.output
    assert (out / ("best/model.pt" if command == "tune" else "sensitivity.json")).exists()
