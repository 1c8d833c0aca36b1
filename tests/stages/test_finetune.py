"""Fine-tuning: it learns, pruned zeros stay zero, and freeze strategies hold."""

from __future__ import annotations

import torch
from torch import nn

from modelshrink.data import DataBundle, build_data
from modelshrink.engine import Result, compress
from modelshrink.metrics.accuracy import evaluate_classifier
from modelshrink.models.zoo import small_cnn
from modelshrink.recipe.schema import SyntheticData

FAST = {"latency": {"batch_size": 2, "warmup": 0, "iterations": 1}}
CNN = {"factory": "modelshrink.models.zoo:small_cnn", "kwargs": {"in_channels": 1, "width": 8}}


def synthetic(**spec: object) -> DataBundle:
    return build_data(SyntheticData(kind="synthetic", **{"channels": 1, "image_size": 8, "num_samples": 320,
                                                          "batch_size": 32, **spec}), 0)  # fmt: skip


def finetune(model: nn.Module | dict, data: DataBundle, **spec: object) -> Result:
    return compress(model, [{"kind": "finetune", **spec}], data=data, evaluate=FAST)


def test_finetune_learns_and_keeps_pruned_weights_zero() -> None:
    data = synthetic()
    pruned = compress(small_cnn(in_channels=1, width=8), [{"kind": "prune", "amount": 0.5}], data=data, evaluate=FAST)
    zeros = {n: (p == 0).clone() for n, p in pruned.model.named_parameters() if p.dim() > 1}
    tuned = finetune(pruned.model, data, epochs=10, lr=0.01)
    assert tuned.final["accuracy"] > max(pruned.final["accuracy"], 0.5)
    for name, param in tuned.model.named_parameters():
        if name in zeros:
            assert (param[zeros[name]] == 0).all(), f"{name} regrew pruned weights"


def changed_params(model: nn.Module, data: DataBundle, **spec: object) -> set[str]:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = finetune(model, data, epochs=1, lr=0.01, keep_best=False, **spec).model  # what trains, not if it helped
    assert all(p.requires_grad for p in tuned.parameters()), "requires_grad is restored after training"
    return {k for k, v in tuned.state_dict().items() if k in before and not torch.equal(v, before[k])}


def test_last_layer_trains_only_the_classifier_and_keeps_bn_stats() -> None:
    assert changed_params(small_cnn(in_channels=1, width=8), synthetic(), strategy="last_layer") == {
        "15.weight", "15.bias"
    }  # fmt: skip


def test_head_strategy_trains_the_whole_head_block() -> None:
    import torchvision

    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    data = synthetic(channels=3, image_size=32, num_samples=32, batch_size=16)
    changed = changed_params(model, data, strategy="head", max_batches_per_epoch=1)
    assert {"classifier.0.weight", "classifier.3.weight"} <= changed  # both Linears of the head
    assert not any(k.startswith("features.") for k in changed)


def test_partial_unfreezes_the_last_blocks_and_named_layers() -> None:
    changed = changed_params(small_cnn(in_channels=1, width=8), synthetic(), strategy="partial", unfreeze=["0"])
    assert {"0.weight", "15.weight"} <= changed and "3.weight" not in changed and "7.weight" not in changed

    import torchvision

    resnet = torchvision.models.resnet18(num_classes=10)
    data = synthetic(channels=3, image_size=32, num_samples=32, batch_size=16)
    changed = changed_params(resnet, data, strategy="partial", unfreeze_last=1, max_batches_per_epoch=1)
    trained = {k.rsplit(".", 2)[0] for k in changed if k.endswith("weight")}
    assert "fc" in trained and any(k.startswith("layer4.1.") for k in changed)
    assert not any(k.startswith(("layer4.0.", "layer1.", "conv1")) for k in changed)


def test_new_classifier_for_transfer_learning_is_recorded_for_reload() -> None:
    from modelshrink.checkpoint import from_bytes, to_bytes

    data = synthetic(num_samples=160, num_classes=3)
    result = finetune(CNN, data, epochs=2, lr=0.01, num_classes=3, strategy="last_layer")
    model = result.model
    assert model[15].out_features == 3 and model(data.example_inputs(2)).shape == (2, 3)
    rebuilt, _ = from_bytes(to_bytes(model, result.lineage))
    assert torch.equal(rebuilt(data.example_inputs(2)), model(data.example_inputs(2)))


def test_layer_lrs_early_stopping_and_keep_best() -> None:
    from modelshrink.recipe.stage_specs import TrainingSettings
    from modelshrink.train import fit, make_optimizer

    model, data = small_cnn(in_channels=1, width=8), synthetic()
    spec = TrainingSettings(lr=0.01, layer_lrs={"15": 0.1}, weight_decay=0.01)
    groups = make_optimizer(spec, list(model.named_parameters())).param_groups
    assert {(g["lr"], g["weight_decay"]) for g in groups} == {(0.1, 0.01), (0.1, 0.0), (0.01, 0.01), (0.01, 0.0)}
    states: list[dict] = []
    fit(
        model,
        data,
        TrainingSettings(epochs=30, lr=1e-7, early_stopping=2, keep_best=True),
        label="t",
        on_epoch=states.append,
    )
    assert len(states) < 30, "a learning rate of 1e-7 cannot keep improving: early stopping ends it"
    best = max(states, key=lambda s: s["best"]["accuracy"])["best"]
    assert evaluate_classifier(model, data.val)["accuracy"] == best["accuracy"]
