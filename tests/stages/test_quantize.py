"""Dynamic int8: quantized modules appear where asked, outputs stay close, the change is recorded."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from modelshrink.checkpoint import from_bytes, to_bytes
from modelshrink.engine import Result, compress
from modelshrink.errors import UserError
from modelshrink.metrics.accuracy import evaluate_classifier
from modelshrink.models.zoo import mlp
from modelshrink.stages.quantize import dynamic, per_token
from tests.conftest import FAST_EVAL, reload, tensor_data


def quantize(model: nn.Module | dict, data, **spec: object) -> Result:
    return compress(model, [{"kind": "quantize", **spec}], data=data, evaluate=FAST_EVAL)


def test_dynamic_int8_replaces_linears_and_keeps_outputs_close() -> None:
    model = mlp(in_features=64, hidden=128, num_classes=10).eval()
    x = torch.randn(32, 64)
    expected = model(x)
    # torch.ao's per-tensor path, named: `auto` picks by measured speed, which differs between CPUs and loads
    result = quantize(model, tensor_data(x), exclude=["5"], activations="per_tensor")
    quantized = result.model
    kinds = {name: type(m).__name__ for name, m in quantized.named_modules()}
    assert kinds["1"] == kinds["3"] == "Linear" and "quantized" in type(quantized[1]).__module__
    assert type(quantized[5]) is nn.Linear, "excluded layer stays float"
    assert torch.allclose(quantized(x), expected, atol=0.05, rtol=0.05)
    assert (quantized(x).argmax(1) == expected.argmax(1)).float().mean() > 0.9
    assert result.final["macs"] == result.baseline["macs"], "precision changes, not the count of MACs"
    assert result.lineage.records() == [
        {"kind": "quantize_dynamic", "version": 1, "modules": ["1", "3"], "dtype": "qint8", "per_channel": True}
    ]


class TokenModel(nn.Module):
    """An embedding table read with strided indices (as Hugging Face's segment ids are), then a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(50, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.table(ids.t().t().expand(-1, -1)[:, ::2]).mean(1))


def test_dynamic_int8_quantizes_embedding_tables_read_with_strided_indices() -> None:
    torch.manual_seed(0)
    model = TokenModel().eval()
    ids = torch.randint(0, 50, (8, 12)).t().contiguous().t()  # a strided view, as the float table accepts
    expected = model(ids)
    result = quantize(model, tensor_data(ids, num_classes=4, examples=ids.contiguous()), activations="per_tensor")
    quantized = result.model
    assert type(quantized.table).__name__ == "ContiguousEmbedding"
    assert quantized.table.weight().dtype == torch.quint8
    assert quantized.head.weight().qscheme() == torch.per_channel_affine
    assert torch.allclose(quantized(ids), expected, atol=0.02)
    reloaded = result.lineage.transforms[0].replay(TokenModel().eval())  # as a checkpoint rebuilds
    reloaded.load_state_dict(quantized.state_dict())
    assert type(reloaded.table).__name__ == "ContiguousEmbedding"
    assert torch.equal(reloaded(ids), quantized(ids))


def test_dynamic_records_from_before_per_channel_still_rebuild_per_tensor() -> None:
    from modelshrink.stages.quantize.dynamic import QuantizeDynamic

    model = QuantizeDynamic(["1"], "qint8").replay(mlp(in_features=8, hidden=8, num_classes=2))
    assert "quantized.dynamic" in type(model[1]).__module__
    assert model[1].weight().qscheme() == torch.per_tensor_affine


def test_nothing_to_quantize_is_a_user_error() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(UserError, match="stage 'quantize1': no Linear/LSTM/GRU/Embedding layer"):
        quantize(model, tensor_data(torch.randn(4, 1, 8, 8), num_classes=2))


@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A small CNN trained once on digits and saved as a checkpoint, which each test quantizes anew."""
    from modelshrink.data import build_data
    from modelshrink.recipe.schema import DigitsData

    data = build_data(DigitsData(kind="digits", image_size=16, channels=1), 0)
    cnn = {"factory": "modelshrink.models.zoo:small_cnn", "kwargs": {"in_channels": 1, "width": 16}}
    trained = compress(cnn, [{"kind": "finetune", "epochs": 3, "lr": 0.003, "schedule": "onecycle"}], data=data,
                       evaluate=FAST_EVAL)  # fmt: skip
    path = tmp_path_factory.mktemp("cnn") / "model.pt"
    path.write_bytes(to_bytes(trained.model, trained.lineage, data.input_shape))
    return path, data


@pytest.mark.parametrize("mode", ["static", "qat", "weight_only", "fp16", "bf16"])
def test_quantization_modes_keep_accuracy_and_reload(mode: str, trained_cnn) -> None:
    path, data = trained_cnn
    original, _ = from_bytes(path.read_bytes())
    before = evaluate_classifier(original, data.val)["accuracy"]
    assert before > 0.9
    spec = {"qat": {"epochs": 1, "lr": 0.0005}} if mode == "qat" else {}
    # FX named: `backend: auto` picks FX or compiled PT2E by measured speed, which differs between CPUs and loads
    exclude = {"exclude": ["15"], "backend": "fx"} if mode == "static" else {}
    result = quantize({"checkpoint": str(path)}, data, mode=mode, **spec, **exclude)
    quantized = result.model
    after = evaluate_classifier(quantized, data.val)["accuracy"]
    assert after >= before - 0.02
    kinds = {type(m).__module__ for m in quantized.modules()}
    # what `BaseStageSpec.may_change` declares, which lets tune stop a candidate on MACs before quantizing it
    assert result.final["macs"] == result.baseline["macs"], "precision changes, not the count of MACs"
    if mode == "weight_only":
        from modelshrink.metrics.size import count_macs, count_parameters, module_tensors

        x1 = data.example_inputs(1)
        assert count_parameters(quantized)["params"] == count_parameters(original)["params"]
        assert count_macs(quantized, x1) == count_macs(original, x1)

        def param_bytes(m: nn.Module) -> int:
            return sum(e.nbytes for e in module_tensors(m) if e.is_param)

        assert param_bytes(quantized) < 0.3 * param_bytes(original)  # int8 weights, float BN and biases
        assert result.final["size_bytes"] < result.baseline["size_bytes"]
    elif mode in ("static", "qat"):
        from modelshrink.metrics.size import module_tensors

        assert any("quantized" in k for k in kinds), "int8 kernels were swapped in"
        assert "torch.qint8" in {str(e.tensor.dtype) for e in module_tensors(quantized) if e.is_param}
    else:
        assert next(quantized.parameters()).dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[mode]
    if mode == "static":
        linear = [m for m in quantized.modules() if type(m) is nn.Linear]
        assert linear, "the excluded classifier stays float"
    x = next(iter(data.val))[0]
    assert torch.equal(reload(result)(x), quantized(x))


def test_channel_pruning_then_static_int8_composes_and_reloads(trained_cnn) -> None:
    path, data = trained_cnn
    stages = [{"kind": "prune", "method": "channel", "amount": 0.5}, {"kind": "quantize", "mode": "static"}]
    result = compress({"checkpoint": str(path)}, stages, data=data, evaluate=FAST_EVAL)
    kinds = [t.kind for t in result.lineage.transforms]
    assert kinds in (["reshape_modules", "quantize_fx"], ["reshape_modules", "quantize_pt2e", "compile"])
    x = next(iter(data.val))[0]
    assert torch.equal(reload(result)(x), result.model(x))


@pytest.mark.parametrize("faster", ["FX (eager)", "PT2E (compiled)"])
def test_backend_auto_measures_fx_and_compiled_pt2e_and_keeps_the_better(
    trained_cnn, faster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelshrink.stages.quantize import choose

    measured = choose.measure

    def measure_with_a_winner(*args: Any) -> list[choose.Trial]:
        trials = measured(*args)
        assert {t.name for t in trials} == {"FX (eager)", "PT2E (compiled)"}
        assert all(t.cosine > 0.99 for t in trials), "both int8 models are judged against float"
        return [replace(t, cosine=1.0, slowness=1.0 if t.name == faster else 2.0) for t in trials]

    monkeypatch.setattr(choose, "measure", measure_with_a_winner)
    path, data = trained_cnn
    stage = {"kind": "quantize", "mode": "static"}
    result = compress({"checkpoint": str(path)}, [stage], data=data, evaluate=FAST_EVAL)
    kinds = [t.kind for t in result.lineage.transforms]
    assert kinds == (["quantize_fx"] if faster.startswith("FX") else ["quantize_pt2e", "compile"])
    assert (
        f"int8 backend chosen on the calibration data (not the validation split), timed at batch 1 and 2: {faster} ("
        in " ".join(result.stages[0].notes.findings)
    )
    resolved = result.stages[0].notes.resolved  # what tune pins in tuned.yaml
    assert resolved == ({"backend": "fx"} if faster.startswith("FX") else {"backend": "pt2e"})
    x = next(iter(data.val))[0]
    with torch.inference_mode():
        torch.testing.assert_close(reload(result)(x), result.model(x), rtol=1e-4, atol=1e-4)


def test_smoothing_moves_outlier_channels_into_the_weights_and_cuts_the_int8_error() -> None:
    from modelshrink.stages.quantize.dynamic import SmoothLinear, input_ranges, set_smoothing

    torch.manual_seed(0)
    x = torch.randn(256, 64)
    x[:, 3] *= 40  # one outlier channel, as transformers' activations have
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 8)).eval()
    model[0].weight.data.copy_(torch.eye(64))  # the outlier reaches the second layer's input
    expected = model(x)
    smoothed = SmoothLinear(["1"]).replay(copy.deepcopy(model))
    set_smoothing(smoothed, ["1"], 0.7, input_ranges(model, ["1"], x.split(64)[:2]))
    assert type(smoothed[1]).__name__ == "SmoothedLinear"
    assert torch.allclose(smoothed(x), expected, atol=1e-4), "smoothing alone is exact in float"

    def int8_error(**spec: object) -> float:
        data = tensor_data(x, num_classes=8, batch_size=64)
        quantized = quantize(copy.deepcopy(model), data, exclude=["0"], calibration_batches=2, **spec).model
        return (quantized(x) - expected).abs().mean().item()

    assert int8_error(smoothing=0.7, activations="per_tensor") < int8_error(activations="per_tensor") / 2
    assert int8_error(smoothing=0.7, activations="per_token") < 0.75 * int8_error(activations="per_token")


def test_per_token_scales_make_a_samples_output_independent_of_its_batch_mates() -> None:
    """torch.ao's per-tensor scale is one per batch: an outlier sample coarsens every other sample's
    steps. Per-token scales give each row its own, so a sample's output is the same in any batch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    x = torch.randn(64, 32)
    loud = x.clone()
    loud[0] *= 50  # one batch-mate with large activations
    data = tensor_data(x, num_classes=8, batch_size=32)
    for activations, independent in (("per_token", True), ("per_tensor", False)):
        quantized = quantize(copy.deepcopy(model), data, activations=activations, calibration_batches=1).model
        with torch.no_grad():
            alone = torch.cat([quantized(row[None]) for row in x[1:9]])
            with_loud = quantized(loud[:9])[1:]
        assert torch.allclose(alone, with_loud, atol=1e-6) is independent, activations


def test_auto_activations_and_smoothing_are_chosen_on_calibration_data_and_said(monkeypatch) -> None:
    monkeypatch.setattr(dynamic, "int8_matmul_slowdown", lambda: 1.0)  # as on a VNNI CPU: per_token is tried
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    data = tensor_data(torch.randn(128, 32), num_classes=8, batch_size=32)
    result = compress(model, [{"kind": "quantize", "mode": "dynamic", "smoothing": "auto"}], data=data,
                      evaluate=FAST_EVAL)  # fmt: skip
    finding = result.stages[0].notes.findings[0]
    assert finding.startswith("dynamic int8 variant chosen on the calibration data (not the validation split)")
    for variant in ("per_token, SmoothQuant 0.5", "per_tensor, SmoothQuant 0.85"):
        assert variant in finding
    kinds = [t.kind for t in result.lineage.transforms]
    assert kinds[0] == "smooth_linear" and ("quantize_per_token" in kinds or "quantize_dynamic" in kinds)
    resolved = result.stages[0].notes.resolved
    assert resolved["smoothing"] in (0.5, 0.7, 0.85) and resolved["activations"] in ("per_token", "per_tensor")
    assert ("quantize_per_token" in kinds) == (resolved["activations"] == "per_token")


def test_auto_activations_skip_per_token_where_the_cpus_int8_matmul_is_far_slower_than_float(monkeypatch) -> None:
    """Without VNNI, torch._int_mm falls back to a reference loop (70x float32 on an AVX2 EPYC): per_token
    could not win and timing it took minutes, so auto does not try it and says why."""
    monkeypatch.setattr(dynamic, "int8_matmul_slowdown", lambda: 70.0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    data = tensor_data(torch.randn(128, 32), num_classes=8, batch_size=32)
    result = compress(model, [{"kind": "quantize", "mode": "dynamic", "smoothing": "auto"}], data=data,
                      evaluate=FAST_EVAL)  # fmt: skip
    skipped, chosen = result.stages[0].notes.findings[:2]
    assert skipped.startswith("activations auto: per_token not tried, as torch's int8 matmul ran 70.0x slower")
    assert "per_tensor, SmoothQuant 0.5" in chosen and "per_token" not in chosen
    assert result.stages[0].notes.resolved["activations"] == "per_tensor"
    assert "quantize_per_token" not in [t.kind for t in result.lineage.transforms]
    assert per_token.int8_matmul_slowdown.__wrapped__() > 0, "the probe itself times both products"


def test_int4_weight_only_with_group_wise_scales() -> None:
    """Two weights per byte and one scale per group: about 7x smaller Linear layers than fp32; smaller
    groups follow the float weights more closely; the checkpoint rebuilds the same model."""
    model = {"factory": "modelshrink.models.zoo:mlp", "kwargs": {"in_features": 256, "hidden": 512, "num_classes": 10}}
    x = torch.randn(64, 256)
    data = tensor_data(x)

    def run(group_size: int) -> Result:
        return quantize(model, data, mode="weight_only", bits=4, group_size=group_size)

    coarse, fine = run(128), run(32)
    base, final = coarse.baseline, coarse.stages[0].metrics
    assert final["size_bytes"] < base["size_bytes"] / 6 and final["params"] == base["params"]
    assert final["macs"] == base["macs"], "precision changes, not the count of MACs"
    assert 0.98 < final["cosine"] < fine.stages[0].metrics["cosine"] < 1.0
    from modelshrink.metrics.size import layer_summary

    assert {row["bits"] for row in layer_summary(coarse.model)} == {4}
    assert "computed in fp32" in coarse.stages[0].notes.findings[0], "the report says which compute path ran"
    assert torch.equal(reload(coarse)(x), coarse.model(x))


def test_group_size_belongs_to_int4() -> None:
    with pytest.raises(ValueError, match="group_size applies to bits: 4"):
        quantize(mlp(in_features=4, num_classes=2), tensor_data(torch.randn(8, 4)), mode="weight_only", group_size=32)


def test_mode_auto_measures_each_candidate_and_keeps_the_fastest_good_one(trained_cnn) -> None:
    path, data = trained_cnn
    result = quantize({"checkpoint": str(path)}, data, mode="auto", calibration_batches=2)
    finding = result.stages[0].notes.findings[0]
    assert finding.startswith("mode auto on ") and "the fastest with cosine >= 0.99 on the calibration data" in finding
    for candidate in ("fp32 (unchanged)", "dynamic:", "static:", "weight_only:", "bf16:", "fp16:"):
        assert candidate in finding
    kept = finding.split("kept ")[1].split(",")[0]
    rows = dict(part.split(": cosine ") for part in finding.split("timed at batch 1 and 2 (", 1)[1][:-1].split("; "))
    cosines = {name: float(row.split(",")[0]) for name, row in rows.items()}
    # timed at the recipe's deployed batch sizes: "b1 0.12 ms, b4 0.30 ms" per candidate
    times = {name: [float(t.split(" ")[1]) for t in row.split(", ")[1:]] for name, row in rows.items()}
    assert "timed at batch 1 and 2" in finding and all(len(t) == 2 for t in times.values())
    fastest = [min(t[i] for t in times.values()) for i in range(2)]
    slowness = {name: math.prod(t[i] / fastest[i] for i in range(2)) for name, t in times.items()}
    best = min(v for n, v in slowness.items() if cosines[n] >= 0.99)
    assert cosines[kept] >= 0.99 and slowness[kept] <= best * 1.1, "the finding prints times rounded to 0.01 ms"
    x = next(iter(data.val))[0]
    assert torch.equal(reload(result)(x), result.model(x)), "the kept variant rebuilds from its checkpoint"

    unchanged = quantize({"checkpoint": str(path)}, data, mode="auto", candidates=["dynamic"], min_cosine=1.0)
    assert "kept fp32 (unchanged)" in unchanged.stages[0].notes.findings[0]
    assert unchanged.lineage.transforms == [] and unchanged.stages[0].metrics["cosine"] == pytest.approx(1.0)


def test_half_precision_slower_than_fp32_is_flagged_with_the_isa_it_lacks() -> None:
    from modelshrink.report import findings

    timing = {"batch1_median": 10.0, "batch1_p95": 11.0, "batchN_median": 50.0, "batchN_p95": 55.0, "batch_n": 8}
    baseline = {"latency_ms": timing}
    slow = {"name": "half", "params": {"mode": "fp16"}, "metrics": {"latency_ms": {**timing, "batch1_median": 40.0}}}
    flagged = findings(baseline, [slow], ["avx2", "avx512f", "avx512_bf16"])
    assert flagged == [
        "half: batch 1 speed-up 0.25x: slower than the original model; fp16 pays off only with avx512_fp16 or "
        "amx_fp16, which this CPU lacks (avx2 avx512f avx512_bf16)"
    ]
    assert "lacks" not in findings(baseline, [slow], ["avx512_fp16"])[0]


def test_mode_auto_keeps_float_when_cosine_is_undefined() -> None:
    """All-zero outputs make every cosine 0 (undefined), the float model's too: it still qualifies."""

    class Silent(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x) * 0

    result = quantize(Silent(), tensor_data(torch.randn(32, 4), num_classes=3), mode="auto", candidates=["dynamic"])
    assert "mode auto on " in result.stages[0].notes.findings[0]
