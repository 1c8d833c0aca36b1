"""`mixed: {max_drop}` on a quantize stage (issue #15): the layers most sensitive to the quantization stay
float, just enough for the drop on calibration data to fit; the rest is quantized; the checkpoint records it."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from modelshrink.cli import app
from modelshrink.engine import compress
from modelshrink.errors import UserError
from modelshrink.metrics.size import layer_summary
from modelshrink.stages.quantize.weight_only import Int4WeightOnly, Int8WeightOnly
from tests.conftest import FAST_EVAL, tensor_data


def mlp_with_an_outlier_layer() -> nn.Sequential:
    """Three Linear layers; in the middle one every row has one huge weight, so one int8 scale per row
    rounds the row's other weights to zero: that layer alone moves the outputs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        model[2].weight[:, 0] = 50.0
    return model.eval()


def test_the_sensitive_layer_stays_float_and_the_rest_is_quantized() -> None:
    model = mlp_with_an_outlier_layer()
    x = torch.randn(256, 32, generator=torch.Generator().manual_seed(1))
    plain = compress(
        mlp_with_an_outlier_layer(),
        [{"kind": "quantize", "mode": "weight_only"}],
        data=tensor_data(x),
        evaluate=FAST_EVAL,
    )
    assert plain.final["agreement"] < 0.95, "quantizing every layer costs this model"
    stage = {"kind": "quantize", "mode": "weight_only", "mixed": {"max_drop": 0.02}}
    result = compress(model, [stage], data=tensor_data(x), evaluate=FAST_EVAL)
    assert type(result.model[2]) is nn.Linear, "the outlier layer stays float"
    assert type(result.model[0]) is not nn.Linear and type(result.model[4]) is not nn.Linear, "the others are int8"
    findings = result.stages[0].notes.findings
    assert findings[0].startswith("mixed precision: drop of each layer quantized alone, most sensitive first: 2 ")
    assert "1 of 3 layers kept float (2)" in findings[1]
    assert result.final["agreement"] >= 0.95
    [record] = result.lineage.transforms
    assert record.modules == ["0", "4"], "the checkpoint records the mixed precision it rebuilds"


def test_a_drop_no_set_can_meet_is_one_line_and_auto_refuses_mixed(recipe_file) -> None:
    model = mlp_with_an_outlier_layer()
    x = torch.randn(64, 32)
    with pytest.raises(UserError, match="no set of int8 layers brings the drop within max_drop 0 "):
        stage = {"kind": "quantize", "mode": "weight_only", "bits": 4, "group_size": 32, "mixed": {"max_drop": 0.0}}
        compress(model, [stage], data=tensor_data(x), evaluate=FAST_EVAL)
    bad = recipe_file(stages=[{"kind": "quantize", "mode": "auto", "mixed": {"max_drop": 0.01}}])
    result = CliRunner().invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2 and "mixed applies to one mode" in result.output


def test_where_the_rest_is_int4_the_sensitive_layers_keep_int8_weights() -> None:
    """int4 weights with an int8 fallback: the layer int4 hurts most gets int8 weights (not float), the
    report's per-layer bits say so, and the checkpoint rebuilds the same mix."""

    def model() -> nn.Sequential:
        torch.manual_seed(0)
        mlp = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        with torch.no_grad():
            mlp[2].weight[:, 0] = 0.5  # one scale per 32 inputs rounds this group's other weights to 0 in int4
        return mlp.eval()

    x = torch.randn(256, 32, generator=torch.Generator().manual_seed(1))
    int4 = {"kind": "quantize", "mode": "weight_only", "bits": 4, "group_size": 32}
    plain = compress(model(), [int4], data=tensor_data(x), evaluate=FAST_EVAL)
    result = compress(model(), [{**int4, "mixed": {"max_drop": 0.05}}], data=tensor_data(x), evaluate=FAST_EVAL)
    assert result.final["agreement"] > plain.final["agreement"] + 0.05
    assert type(result.model[2]) is Int8WeightOnly and type(result.model[0]) is Int4WeightOnly
    assert "layers kept int8 (2" in result.stages[0].notes.findings[1]
    bits = {row["name"]: row["bits"] for row in layer_summary(result.model)}
    assert bits["0"] == 4 and bits["2"] == 8
    [record] = result.lineage.transforms
    assert record.modules == ["0", "2", "4"] and "2" in record.int8_modules and "0" not in record.int8_modules
    reloaded = record.replay(model())  # what loading the checkpoint does before it loads the tensors
    reloaded.load_state_dict(result.model.state_dict())
    assert [type(layer) for layer in reloaded] == [type(layer) for layer in result.model]
    assert torch.equal(reloaded(x), result.model(x))


def test_int8_layers_belong_to_int4() -> None:
    with pytest.raises(ValueError, match="int8 applies to bits: 4"):
        stage = {"kind": "quantize", "mode": "weight_only", "int8": ["0"]}
        compress(mlp_with_an_outlier_layer(), [stage], data=tensor_data(torch.randn(8, 32)), evaluate=FAST_EVAL)
