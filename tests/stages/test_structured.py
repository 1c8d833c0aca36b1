"""Channel and block pruning on the torchvision families the issue names, plus a plain MLP:
prune, check the forward shape, save, rebuild from the checkpoint alone, compare outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelshrink.checkpoint import from_bytes, to_bytes
from modelshrink.data import DataBundle, build_data
from modelshrink.engine import Result, compress
from modelshrink.errors import UserError
from modelshrink.recipe.schema import SyntheticData
from tests.conftest import FAST_EVAL

# The big ones take 10-30 s each on 2 cores: slow, so the default suite stays short.
FAMILIES = [
    "resnet18",
    "resnet50",
    "mobilenet_v3_small",
    "efficientnet_b0",
    *(pytest.param(n, marks=pytest.mark.slow) for n in ("mobilenet_v2", "vgg11_bn", "densenet121", "regnet_y_400mf")),
]


def synthetic(channels: int = 3, size: int = 32) -> DataBundle:
    return build_data(
        SyntheticData(kind="synthetic", channels=channels, image_size=size, num_samples=40, batch_size=8), 0
    )


def prune(model: nn.Module | dict, data: DataBundle, **spec: object) -> Result:
    return compress(model, [{"kind": "prune", **spec}], data=data, evaluate=FAST_EVAL)


def prune_save_reload(arch: dict, data: DataBundle, **spec: object) -> tuple[Result, nn.Module]:
    result = prune(arch, data, **spec)
    x = data.example_inputs(2)
    assert result.model(x).shape == (2, 10)
    assert result.final["params"] < result.baseline["params"]
    rebuilt, _ = from_bytes(to_bytes(result.model, result.lineage, data.input_shape))
    assert torch.allclose(rebuilt(x), result.model(x), atol=1e-5)
    return result, rebuilt


@pytest.mark.parametrize("name", FAMILIES)
def test_channel_pruning_torchvision_families(name: str) -> None:
    arch = {"torchvision": name, "kwargs": {"num_classes": 10}}
    result, rebuilt = prune_save_reload(arch, synthetic(), method="channel", amount=0.3, round_to=4)
    classifier = [m for m in result.model.modules() if isinstance(m, nn.Linear)][-1]
    assert classifier.out_features == 10, "the classifier is never pruned"
    convs = [m for m in rebuilt.modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    assert all(m.out_channels % 4 == 0 for m in convs), "round_to: 4 keeps every pruned width a multiple of 4"


def test_channel_pruning_mlp_with_per_layer_ratio_and_steps() -> None:
    arch = {"factory": "modelshrink.models.zoo:mlp", "kwargs": {"in_features": 64, "hidden": 64}}
    result, _ = prune_save_reload(
        arch,
        synthetic(channels=1, size=8),
        method="channel",
        amount=0.25,
        layer_amounts={"3": 0.5},
        steps=2,
        finetune_between={"epochs": 1, "lr": 0.01},
    )
    pruned = result.model
    assert pruned[1].out_features == 48 and pruned[3].out_features == 32 and pruned[5].in_features == 32
    assert [t.kind for t in result.lineage.transforms] == ["reshape_modules"]


@pytest.mark.parametrize("importance", ["l2", "bn_scale", "taylor", "random"])
def test_channel_importances(importance: str) -> None:
    arch = {"factory": "modelshrink.models.zoo:small_cnn", "kwargs": {"width": 16}}
    result, _ = prune_save_reload(arch, synthetic(), method="channel", amount=0.5, importance=importance)
    assert result.model[0].out_channels == 8


def test_block_pruning_drops_measured_least_important_blocks() -> None:
    arch = {"torchvision": "resnet18", "kwargs": {"num_classes": 10}}
    result, rebuilt = prune_save_reload(arch, synthetic(), method="block", amount=0.4)
    record = result.lineage.transforms[-1]
    assert set(record.scores) == {"layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"}
    assert len(record.modules) == 2
    lowest = sorted(record.scores, key=record.scores.get)[:2]
    assert record.modules == lowest
    for name in lowest:
        assert isinstance(rebuilt.get_submodule(name), nn.Identity)


class _Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(x.shape[0], 16 * 8 * 8))  # a hard-coded width breaks once channels go


class HardcodedWidth(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.head = _Head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)))


def test_unprunable_models_get_a_clear_error_naming_the_layer() -> None:
    from modelshrink.models.zoo import mlp

    data = synthetic(channels=1, size=8)
    with pytest.raises(UserError, match="stage 'prune1' left a model that fails at layer 'head'"):
        prune(HardcodedWidth(), data, method="channel", amount=0.5)
    with pytest.raises(UserError, match="no block can be removed"):
        prune(mlp(), data, method="block", amount=0.5)
    with pytest.raises(UserError, match="matches no layer"):
        prune(mlp(), data, method="channel", amount=0.5, layer_amounts={"nope*": 0.5})


def test_batchnorm_recalibration_matches_the_statistics_of_the_data() -> None:
    from modelshrink.train import recalibrate_batchnorm

    data = synthetic(channels=1, size=8)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, momentum=0.1))
    recalibrate_batchnorm(model, data, batches=100)
    with torch.no_grad():
        features = torch.cat([model[0](x) for x, _ in data.train])
    assert torch.allclose(model[1].running_mean, features.mean(dim=(0, 2, 3)), atol=1e-4)
    assert model[1].momentum == 0.1 and not model.training
