"""Fine-tuning: it learns, pruned zeros stay zero, and freeze strategies hold."""

from __future__ import annotations

import torch
from torch import nn

from modelshrink.data import build_data
from modelshrink.lineage import Lineage
from modelshrink.metrics.accuracy import evaluate_classifier
from modelshrink.models.zoo import small_cnn
from modelshrink.recipe.schema import EvaluateSpec, SyntheticData
from modelshrink.recipe.stage_specs import FinetuneSpec
from modelshrink.stages import make_stage
from modelshrink.stages.base import StageContext
from modelshrink.stages.finetune import FinetuneStage


def setup() -> tuple[nn.Module, StageContext]:
    data = build_data(SyntheticData(kind="synthetic", channels=1, image_size=8, num_samples=320, batch_size=32), 0)
    model = small_cnn(in_channels=1, width=8)
    ctx = StageContext(
        data=data, original_model=model, lineage=Lineage({"factory": "x:y"}), evaluate=EvaluateSpec(), seed=0
    )
    return model, ctx


def finetune(model: nn.Module, ctx: StageContext, **spec: object) -> nn.Module:
    return FinetuneStage(FinetuneSpec(kind="finetune", **spec), "ft").apply(model, ctx)


def test_finetune_learns_and_keeps_pruned_weights_zero() -> None:
    model, ctx = setup()
    make_stage(dict(kind="prune", amount=0.5), "p").apply(model, ctx)
    zeros = {n: (p == 0).clone() for n, p in model.named_parameters() if p.dim() > 1}
    before = evaluate_classifier(model, ctx.data.val)["accuracy"]
    finetune(model, ctx, epochs=10, lr=0.01)
    after = evaluate_classifier(model, ctx.data.val)["accuracy"]
    assert after > max(before, 0.5)
    for name, param in model.named_parameters():
        if name in zeros:
            assert (param[zeros[name]] == 0).all(), f"{name} regrew pruned weights"


def changed_params(model: nn.Module, ctx: StageContext, **spec: object) -> set[str]:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    finetune(model, ctx, epochs=1, lr=0.01, keep_best=False, **spec)  # what trains, not whether it helped
    assert all(p.requires_grad for p in model.parameters()), "requires_grad is restored after training"
    return {k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])}


def test_last_layer_trains_only_the_classifier_and_keeps_bn_stats() -> None:
    model, ctx = setup()
    assert changed_params(model, ctx, strategy="last_layer") == {"15.weight", "15.bias"}


def test_head_strategy_trains_the_whole_head_block() -> None:
    import torchvision

    _, ctx = setup()
    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    ctx.data = build_data(SyntheticData(kind="synthetic", image_size=32, num_samples=32, batch_size=16), 0)
    changed = changed_params(model, ctx, strategy="head", max_batches_per_epoch=1)
    assert {"classifier.0.weight", "classifier.3.weight"} <= changed  # both Linears of the head
    assert not any(k.startswith("features.") for k in changed)


def test_partial_unfreezes_the_last_blocks_and_named_layers() -> None:
    model, ctx = setup()
    changed = changed_params(model, ctx, strategy="partial", unfreeze=["0"])
    assert {"0.weight", "15.weight"} <= changed and "3.weight" not in changed and "7.weight" not in changed

    import torchvision

    resnet = torchvision.models.resnet18(num_classes=10)
    ctx.data = build_data(SyntheticData(kind="synthetic", image_size=32, num_samples=32, batch_size=16), 0)
    changed = changed_params(resnet, ctx, strategy="partial", unfreeze_last=1, max_batches_per_epoch=1)
    trained = {k.rsplit(".", 2)[0] for k in changed if k.endswith("weight")}
    assert "fc" in trained and any(k.startswith("layer4.1.") for k in changed)
    assert not any(k.startswith(("layer4.0.", "layer1.", "conv1")) for k in changed)


def test_new_classifier_for_transfer_learning_is_recorded_for_reload() -> None:
    from modelshrink.checkpoint import model_from_payload, to_bytes

    model, ctx = setup()
    ctx.data = build_data(SyntheticData(kind="synthetic", channels=1, image_size=8, num_samples=160, num_classes=3), 0)
    model = finetune(model, ctx, epochs=2, lr=0.01, num_classes=3, strategy="last_layer")
    assert model[15].out_features == 3 and model(ctx.data.example_inputs(2)).shape == (2, 3)
    ctx.lineage.architecture = {"factory": "modelshrink.models.zoo:small_cnn", "kwargs": {"in_channels": 1, "width": 8}}
    import io

    payload = torch.load(io.BytesIO(to_bytes(model, ctx.lineage)), weights_only=True)
    rebuilt, _ = model_from_payload(payload, None)  # type: ignore[arg-type]
    assert torch.equal(rebuilt.eval()(ctx.data.example_inputs(2)), model(ctx.data.example_inputs(2)))


def test_layer_lrs_early_stopping_and_keep_best() -> None:
    from modelshrink.recipe.stage_specs import TrainingSettings
    from modelshrink.train import fit, make_optimizer

    model, ctx = setup()
    spec = TrainingSettings(lr=0.01, layer_lrs={"15": 0.1}, weight_decay=0.01)
    groups = make_optimizer(spec, list(model.named_parameters())).param_groups
    assert {(g["lr"], g["weight_decay"]) for g in groups} == {(0.1, 0.01), (0.1, 0.0), (0.01, 0.01), (0.01, 0.0)}
    states: list[dict] = []
    fit(
        model,
        ctx.data,
        TrainingSettings(epochs=30, lr=1e-7, early_stopping=2, keep_best=True),
        label="t",
        on_epoch=states.append,
    )
    assert len(states) < 30, "a learning rate of 1e-7 cannot keep improving: early stopping ends it"
    best = max(states, key=lambda s: s["best"]["accuracy"])["best"]
    assert evaluate_classifier(model, ctx.data.val)["accuracy"] == best["accuracy"]
