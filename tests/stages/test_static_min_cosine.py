"""`min_cosine` on a static int8 stage: a model int8 hurts is not kept silently; its most sensitive
layers stay float (as `mixed` chooses them) until the cosine to float is met, or the stage fails in one line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelshrink.engine import compress
from modelshrink.errors import UserError
from tests.conftest import FAST_EVAL, tensor_data


def outlier_inputs_model() -> tuple[nn.Module, torch.Tensor]:
    """The first layer's input has one feature at +-3000 on some samples (its weight is tiny): one int8
    scale for that input wipes out the other features, while every later layer quantizes well."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    with torch.no_grad():
        model[0].weight[:, 0] *= 1e-3
    x = torch.randn(256, 16)
    x[::8, 0] = 3000.0
    return model, x


def static(min_cosine: float | None) -> dict:
    return {"kind": "quantize", "mode": "static", "backend": "fx", **({"min_cosine": min_cosine} if min_cosine else {})}


def test_below_min_cosine_the_most_sensitive_layers_stay_float() -> None:
    model, x = outlier_inputs_model()
    data = tensor_data(x, labeled=False, class_targets=False)
    plain = compress(model, [static(None)], data=data, evaluate=FAST_EVAL)
    assert plain.stages[0].metrics["cosine"] < 0.9, "int8 everywhere hurts this model"
    model, x = outlier_inputs_model()
    floored = compress(model, [static(0.99)], data=data, evaluate=FAST_EVAL)
    findings = floored.stages[0].notes.findings
    assert any(f.startswith("cosine to float on the calibration data") and "< min_cosine 0.99" in f for f in findings)
    assert "mixed precision: 1 of 3 layers kept float (0) for a drop of" in " ".join(findings)
    assert floored.stages[0].metrics["cosine"] >= 0.99, "judged on the validation split too"
    kept = floored.model.get_submodule("0")  # fused with its ReLU, float
    assert not any("quantized" in type(m).__module__ for m in kept.modules()), "the sensitive layer stayed float"
    assert any("quantized" in type(m).__module__ for m in floored.model.get_submodule("2").modules())


def test_min_cosine_met_at_once_quantizes_everything_and_an_impossible_one_is_one_line() -> None:
    model, x = outlier_inputs_model()
    easy = compress(model, [static(0.5)], data=tensor_data(x, labeled=False, class_targets=False), evaluate=FAST_EVAL)
    assert any(">= min_cosine 0.5" in f for f in easy.stages[0].notes.findings)
    model, x = outlier_inputs_model()
    impossible = r"^stage 'quantize1': min_cosine: no set of float layers brings the drop within min_cosine 1 \("
    with pytest.raises(UserError, match=impossible):
        compress(model, [static(1.0)], data=tensor_data(x, labeled=False, class_targets=False), evaluate=FAST_EVAL)


def test_min_cosine_and_mixed_are_one_choice() -> None:
    from modelshrink.recipe.stage_specs import StaticQuantSpec

    with pytest.raises(ValueError, match="min_cosine and mixed both choose which layers stay float"):
        StaticQuantSpec.model_validate({"kind": "quantize", "mode": "static", "min_cosine": 0.9,
                                        "mixed": {"max_drop": 0.01}})  # fmt: skip


def test_observer_auto_keeps_the_activation_ranges_closer_to_float() -> None:
    model, x = outlier_inputs_model()
    data = tensor_data(x, labeled=False, class_targets=False, batch_size=16)
    result = compress(model, [{**static(None), "observer": "auto"}], data=data, evaluate=FAST_EVAL)
    [finding] = [f for f in result.stages[0].notes.findings if f.startswith("activation observer chosen")]
    assert "held-out calibration batches" in finding
    cosines = dict(part.split(": cosine ") for part in finding.split(" (", 1)[1].rstrip(")").split("; "))
    chosen = result.stages[0].notes.resolved["observer"]
    assert set(cosines) == {"histogram", "minmax"} and float(cosines[chosen]) == max(map(float, cosines.values()))
    assert finding.split(": ", 1)[1].startswith(chosen)
    assert [t.observer for t in result.lineage.transforms] == [chosen], "the checkpoint replays the kept ranges"
