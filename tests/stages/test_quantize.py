"""Dynamic int8: quantized modules appear where asked, outputs stay close, the change is recorded."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from modelshrink.errors import UserError
from modelshrink.lineage import Lineage
from modelshrink.models.zoo import mlp
from modelshrink.recipe.schema import EvaluateSpec
from modelshrink.stages import make_stage
from modelshrink.stages.base import StageContext


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
    quantized = make_stage(dict(kind="quantize", exclude=["5"]), "q").apply(model, ctx)
    kinds = {name: type(m).__name__ for name, m in quantized.named_modules()}
    assert kinds["1"] == kinds["3"] == "Linear" and "quantized" in type(quantized[1]).__module__
    assert type(quantized[5]) is nn.Linear, "excluded layer stays float"
    assert torch.allclose(quantized(x), expected, atol=0.05, rtol=0.05)
    assert (quantized(x).argmax(1) == expected.argmax(1)).float().mean() > 0.9
    assert ctx.lineage.records() == [
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
    ctx = context()
    quantized = make_stage(dict(kind="quantize"), "q").apply(model, ctx)
    assert type(quantized.table).__name__ == "ContiguousEmbedding"
    assert quantized.table.weight().dtype == torch.quint8
    assert quantized.head.weight().qscheme() == torch.per_channel_affine
    assert torch.allclose(quantized(ids), expected, atol=0.02)
    reloaded = ctx.lineage.transforms[0].replay(TokenModel().eval())  # as a checkpoint rebuilds
    reloaded.load_state_dict(quantized.state_dict())
    assert type(reloaded.table).__name__ == "ContiguousEmbedding"
    assert torch.equal(reloaded(ids), quantized(ids))


def test_dynamic_records_from_before_per_channel_still_rebuild_per_tensor() -> None:
    from modelshrink.stages.quantize.dynamic import QuantizeDynamic

    model = QuantizeDynamic(["1"], "qint8").replay(mlp(in_features=8, hidden=8, num_classes=2))
    assert "quantized.dynamic" in type(model[1]).__module__
    assert model[1].weight().qscheme() == torch.per_tensor_affine


def test_nothing_to_quantize_is_a_user_error() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(UserError, match="no Linear/LSTM/GRU/Embedding layer"):
        make_stage(dict(kind="quantize"), "q").apply(model, context())


@pytest.fixture(scope="module")
def trained_cnn() -> tuple[nn.Module, StageContext]:
    """Trained once for all modes (each test quantizes a copy); seeded here, as it runs before per-test seeding."""
    torch.manual_seed(0)
    from modelshrink.data import build_data
    from modelshrink.models.zoo import small_cnn
    from modelshrink.recipe.schema import DigitsData
    from modelshrink.recipe.stage_specs import FinetuneSpec
    from modelshrink.stages.finetune import FinetuneStage

    data = build_data(DigitsData(kind="digits", image_size=16, channels=1), 0)
    ctx = context()
    ctx.data = data
    ctx.lineage = Lineage({"factory": "modelshrink.models.zoo:small_cnn", "kwargs": {"in_channels": 1, "width": 16}})
    model = small_cnn(in_channels=1, width=16)
    FinetuneStage(FinetuneSpec(kind="finetune", epochs=3, lr=0.003, schedule="onecycle"), "t").apply(model, ctx)
    return model, ctx


def reload(model: nn.Module, ctx: StageContext) -> nn.Module:
    import io

    from modelshrink.checkpoint import model_from_payload, to_bytes

    payload = torch.load(io.BytesIO(to_bytes(model, ctx.lineage, ctx.data.input_shape)), weights_only=True)
    return model_from_payload(payload, None)[0]  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["static", "qat", "weight_only", "fp16", "bf16"])
def test_quantization_modes_keep_accuracy_and_reload(mode: str, trained_cnn) -> None:
    import copy

    from modelshrink.metrics.accuracy import evaluate_classifier

    model, ctx = copy.deepcopy(trained_cnn)
    before = evaluate_classifier(model, ctx.data.val)["accuracy"]
    assert before > 0.9
    spec = {"qat": {"epochs": 1, "lr": 0.0005}} if mode == "qat" else {}
    exclude = {"exclude": ["15"]} if mode == "static" else {}
    quantized = make_stage(dict(kind="quantize", mode=mode, **spec, **exclude), "q").apply(model, ctx)
    after = evaluate_classifier(quantized, ctx.data.val)["accuracy"]
    assert after >= before - 0.02
    kinds = {type(m).__module__ for m in quantized.modules()}
    if mode == "weight_only":
        from modelshrink.checkpoint import to_bytes
        from modelshrink.metrics.size import count_macs, count_parameters, module_tensors

        original, original_ctx = trained_cnn
        x1 = ctx.data.example_inputs(1)
        assert count_parameters(quantized)["params"] == count_parameters(original)["params"]
        assert count_macs(quantized, x1) == count_macs(original, x1)

        def param_bytes(m: nn.Module) -> int:
            return sum(e.nbytes for e in module_tensors(m) if e.is_param)

        assert param_bytes(quantized) < 0.3 * param_bytes(original)  # int8 weights, float BN and biases
        assert len(to_bytes(quantized, ctx.lineage)) < len(to_bytes(original, original_ctx.lineage))
    elif mode in ("static", "qat"):
        assert any("quantized" in k for k in kinds), "int8 kernels were swapped in"
        dtypes = {
            str(e.tensor.dtype)
            for e in __import__("modelshrink.metrics.size", fromlist=["x"]).module_tensors(quantized)
            if e.is_param
        }
        assert "torch.qint8" in dtypes
    else:
        assert next(quantized.parameters()).dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[mode]
    if mode == "static":
        linear = [m for m in quantized.modules() if type(m) is nn.Linear]
        assert linear, "the excluded classifier stays float"
    rebuilt = reload(quantized, ctx)
    x = next(iter(ctx.data.val))[0]
    assert torch.equal(rebuilt(x), quantized(x))


def test_channel_pruning_then_static_int8_composes_and_reloads(trained_cnn) -> None:
    import copy

    from modelshrink.stages import make_stage

    model, ctx = copy.deepcopy(trained_cnn)
    pruned = make_stage(dict(kind="prune", method="channel", amount=0.5), "p").apply(model, ctx)
    quantized = make_stage(dict(kind="quantize", mode="static"), "q").apply(pruned, ctx)
    assert [t.kind for t in ctx.lineage.transforms] == ["reshape_modules", "quantize_fx"]
    rebuilt = reload(quantized, ctx)
    x = next(iter(ctx.data.val))[0]
    assert torch.equal(rebuilt(x), quantized(x))


def test_smoothing_moves_outlier_channels_into_the_weights_and_cuts_the_int8_error() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from modelshrink.stages.quantize.dynamic import smooth

    torch.manual_seed(0)
    x = torch.randn(256, 64)
    x[:, 3] *= 40  # one outlier channel, as transformers' activations have
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 8)).eval()
    model[0].weight.data.copy_(torch.eye(64))  # the outlier reaches the second layer's input
    expected = model(x)
    ctx = context()
    ctx.data = type("Data", (), {"train": DataLoader(TensorDataset(x, torch.zeros(256)), batch_size=64)})()
    smoothed = smooth(copy.deepcopy(model), ["1"], 0.7, ctx, batches=2)
    assert type(smoothed[1]).__name__ == "SmoothedLinear" and ctx.lineage.transforms[0].kind == "smooth_linear"
    assert torch.allclose(smoothed(x), expected, atol=1e-4), "smoothing alone is exact in float"

    def int8_error(spec: dict, m: nn.Module) -> float:
        quantized = make_stage(spec, "q").apply(m, ctx)
        return (quantized(x) - expected).abs().mean().item()

    plain = int8_error(dict(kind="quantize", exclude=["0"]), copy.deepcopy(model))
    with_smoothing = int8_error(dict(kind="quantize", exclude=["0"], smoothing=0.7), copy.deepcopy(model))
    assert with_smoothing < plain / 2
