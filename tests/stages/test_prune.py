"""Unstructured pruning: exact sparsity of the selected layers, permanence, selection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelshrink.engine import compress
from modelshrink.errors import UserError
from modelshrink.models.zoo import mlp, small_cnn
from tests.conftest import FAST_EVAL, tensor_data


def prune(model: nn.Module, **spec: object) -> nn.Module:
    """Prune in place (as compress does); a CNN takes 3x8x8 images, an MLP 8 features."""
    shape = (3, 8, 8) if isinstance(model[0], nn.Conv2d) else (8,)
    inputs = torch.randn(8, *shape)
    data = tensor_data(inputs, num_classes=model(inputs).shape[1])  # compress checks the model fits the data
    return compress(model, [{"kind": "prune", **spec}], data=data, evaluate=FAST_EVAL).model


def sparsity(modules: list[nn.Module]) -> float:
    total = sum(m.weight.numel() for m in modules)
    return sum((m.weight == 0).sum().item() for m in modules) / total


@pytest.mark.parametrize("importance", ["l1", "random"])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_sparsity_of_selected_layers_equals_amount(importance: str, scope: str) -> None:
    model = small_cnn(in_channels=3, width=8)
    prune(model, amount=0.3, importance=importance, scope=scope, module_types=["Conv2d"])
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sparsity(convs) == pytest.approx(0.3, abs=1e-3)
    if scope == "layer":
        for conv in convs:
            assert sparsity([conv]) == pytest.approx(0.3, abs=1 / conv.weight.numel())
    linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert (linear.weight != 0).all(), "Linear was not selected and must stay dense"


def test_l1_removes_the_smallest_magnitudes_and_is_permanent() -> None:
    model = mlp(in_features=8, hidden=16, num_classes=4)
    before = model[1].weight.detach().abs().clone()
    prune(model, amount=0.25, scope="layer", include=["1"])
    after = model[1].weight.detach()
    zeroed = after == 0
    assert before[zeroed].max() <= before[~zeroed].min()
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    assert not any("orig" in n or "mask" in n for n in names)
    assert not model[1]._forward_pre_hooks


def test_exclude_and_no_match() -> None:
    model = mlp(in_features=8, hidden=16, num_classes=4)
    prune(model, amount=0.5, exclude=["5"])  # the classifier of a depth-2 MLP is layer 5
    assert (model[5].weight != 0).all()
    with pytest.raises(UserError, match="no layer matches"):
        prune(model, amount=0.5, include=["nothing*"])


def test_a_second_stage_tightens_rather_than_compounds() -> None:
    model = mlp(in_features=8, hidden=16, num_classes=4)
    prune(model, amount=0.2)
    prune(model, amount=0.5)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert sparsity(linears) == pytest.approx(0.5, abs=1e-2)
    assert torch.isfinite(model(torch.randn(2, 8))).all()
