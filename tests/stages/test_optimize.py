"""The `optimize` stage (issue #14): batch norms folded into the convolutions before them with the
outputs unchanged, channels_last kept only where asked or measured faster, and both replayed on reload."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import modelshrink.stages.optimize as optimize
from modelshrink.checkpoint import from_bytes, to_bytes
from modelshrink.cli import app
from modelshrink.engine import compress
from modelshrink.stages.fold import conv_bn_pairs
from tests.conftest import FAST_EVAL, tensor_data

CNN = {"factory": "modelshrink.models.zoo:small_cnn", "kwargs": {"in_channels": 1, "width": 8}}


def trained_norms(model: nn.Module) -> nn.Module:
    """Batch norm statistics and affine terms away from their initial identity, as after training."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator))
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(n, generator=generator))
            module.bias.data.copy_(torch.randn(n, generator=generator))
    return model.eval()


@pytest.mark.parametrize("channels_last", [True, False])
def test_folding_removes_every_batch_norm_keeps_the_outputs_and_reloads(channels_last: bool) -> None:
    from modelshrink.loading import load_model
    from modelshrink.recipe.schema import ModelSpec

    model, _ = load_model(ModelSpec.model_validate(CNN))
    trained_norms(model)
    x = torch.randn(16, 1, 8, 8)
    expected = model(x)
    stage = {"kind": "optimize", "channels_last": channels_last}
    result = compress(model, [stage], data=tensor_data(x, batch_size=8), evaluate=FAST_EVAL)
    folded = result.model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(folded(x), expected, atol=1e-4)
    assert "folded 4 of 4 batch norms into the convolutions before them" in result.stages[0].notes.findings
    assert [t.kind for t in result.lineage.transforms] == ["fold_batchnorm", *(["channels_last"] * channels_last)]
    result.lineage.architecture = dict(CNN)  # rebuildable, as from a recipe's model section
    blob = to_bytes(folded, result.lineage, (1, 8, 8))
    reloaded, _ = from_bytes(blob)
    assert torch.allclose(reloaded(x), expected, atol=1e-4)
    weight = reloaded.get_submodule("3").weight  # the second convolution: more than one input channel
    assert weight.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_auto_keeps_channels_last_only_when_it_measures_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(8, 1, 8, 8)
    for winner in (optimize.CHANNELS_LAST, optimize.CONTIGUOUS):
        monkeypatch.setattr(optimize.choose, "choose", lambda *args, w=winner: w)
        model = trained_norms(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 10)))
        result = compress(model, [{"kind": "optimize"}], data=tensor_data(x), evaluate=FAST_EVAL)
        kinds = [t.kind for t in result.lineage.transforms]
        assert kinds == ["fold_batchnorm", "channels_last"] if winner == optimize.CHANNELS_LAST else ["fold_batchnorm"]


class SharedOutput(nn.Module):
    """The first convolution's output feeds its batch norm and a skip connection: folding would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.norm2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.after_pool = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.norm2(self.conv2(self.norm(y) + y))
        return self.after_pool(nn.functional.max_pool2d(z, 2)).flatten(1)


def test_only_a_batch_norm_that_alone_takes_a_convolutions_output_is_folded() -> None:
    model = trained_norms(SharedOutput())
    assert conv_bn_pairs(model, torch.randn(2, 1, 8, 8)) == [("conv2", "norm2")]
    x = torch.randn(8, 1, 8, 8)
    expected = model(x)
    data = tensor_data(x, num_classes=expected.shape[1])
    result = compress(model, [{"kind": "optimize", "channels_last": False}], data=data, evaluate=FAST_EVAL)
    assert "folded 1 of 3 batch norms" in result.stages[0].notes.findings[0]
    assert torch.allclose(result.model(x), expected, atol=1e-4)


def test_training_after_folding_is_refused_in_one_line(recipe_file) -> None:
    stages = [{"kind": "optimize"}, {"kind": "finetune", "epochs": 1}]
    result = CliRunner().invoke(app, ["run", str(recipe_file(model=CNN, stages=stages))])
    assert result.exit_code == 2
    assert "whose batch norms an earlier 'optimize' stage folded away; put training stages before it" in result.output
    allowed = [{"kind": "optimize", "fold_batchnorm": False}, {"kind": "finetune", "epochs": 1}]
    assert CliRunner().invoke(app, ["validate", str(recipe_file(model=CNN, stages=allowed))]).exit_code == 0


class NormAct(nn.BatchNorm2d):
    """As timm's BatchNormAct2d: a batch norm subclass whose forward also applies an activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(super().forward(x))


def test_a_batch_norm_subclass_doing_more_is_left_alone_and_a_fold_that_moves_outputs_is_undone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = trained_norms(nn.Sequential(nn.Conv2d(1, 4, 3), NormAct(4), nn.Flatten(), nn.Linear(144, 10)))
    assert conv_bn_pairs(model, torch.randn(2, 1, 8, 8)) == []
    x = torch.randn(8, 1, 8, 8)
    stage = {"kind": "optimize", "channels_last": False}
    result = compress(model, [stage], data=tensor_data(x), evaluate=FAST_EVAL)
    assert (
        "no batch norm directly follows a convolution (1 batch norms left as they are)"
        in result.stages[0].notes.findings
    )
    # a fold that changed the outputs (as dropping an activation would) is not kept
    monkeypatch.setattr(optimize, "conv_bn_pairs", lambda model, example: [("0", "1")])
    model = trained_norms(nn.Sequential(nn.Conv2d(1, 4, 3), NormAct(4), nn.Flatten(), nn.Linear(144, 10)))
    result = compress(model, [stage], data=tensor_data(x), evaluate=FAST_EVAL)
    assert result.lineage.transforms == [] and isinstance(result.model[1], NormAct)
    assert result.stages[0].notes.findings[0].startswith("batch norms not folded: folding moved the outputs")
