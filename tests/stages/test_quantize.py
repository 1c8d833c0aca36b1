"""Dynamic int8: quantized modules appear where asked, outputs stay close, the change is recorded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelshrink.checkpoint import Lineage
from modelshrink.errors import UserError
from modelshrink.models.zoo import mlp
from modelshrink.recipe.schema import EvaluateSpec, QuantizeSpec
from modelshrink.stages.base import StageContext
from modelshrink.stages.quantize import QuantizeStage


def context() -> StageContext:
    return StageContext(
        data=None,
        original_model=None,
        lineage=Lineage({"factory": "x:y"}),  # type: ignore[arg-type]
        evaluate=EvaluateSpec(),
        seed=0,
    )


def test_dynamic_int8_replaces_linears_and_keeps_outputs_close() -> None:
    model = mlp(in_features=64, hidden=128, num_classes=10).eval()
    x = torch.randn(32, 64)
    expected = model(x)
    ctx = context()
    quantized = QuantizeStage(QuantizeSpec(kind="quantize", exclude=["5"]), "q").apply(model, ctx)
    kinds = {name: type(m).__name__ for name, m in quantized.named_modules()}
    assert kinds["1"] == kinds["3"] == "Linear" and "quantized" in type(quantized[1]).__module__
    assert type(quantized[5]) is nn.Linear, "excluded layer stays float"
    assert torch.allclose(quantized(x), expected, atol=0.05, rtol=0.05)
    assert (quantized(x).argmax(1) == expected.argmax(1)).float().mean() > 0.9
    assert ctx.lineage.transforms == [{"kind": "quantize_dynamic", "modules": ["1", "3"], "dtype": "qint8"}]


def test_nothing_to_quantize_is_a_user_error() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(UserError, match="no Linear/LSTM/GRU layer"):
        QuantizeStage(QuantizeSpec(kind="quantize"), "q").apply(model, context())
