"""Fine-tuning: it learns, pruned zeros stay zero, and freeze strategies hold."""

from __future__ import annotations

import torch
from torch import nn

from modelshrink.checkpoint import Lineage
from modelshrink.data import build_data
from modelshrink.metrics.accuracy import evaluate_classifier
from modelshrink.models.zoo import small_cnn
from modelshrink.recipe.schema import EvaluateSpec, FinetuneSpec, PruneSpec, SyntheticData
from modelshrink.stages.base import StageContext
from modelshrink.stages.finetune import FinetuneStage
from modelshrink.stages.prune import PruneStage


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
    PruneStage(PruneSpec(kind="prune", amount=0.5), "p").apply(model, ctx)
    zeros = {n: (p == 0).clone() for n, p in model.named_parameters() if p.dim() > 1}
    before = evaluate_classifier(model, ctx.data.val)["accuracy"]
    finetune(model, ctx, epochs=10, lr=0.01)
    after = evaluate_classifier(model, ctx.data.val)["accuracy"]
    assert after > max(before, 0.5)
    for name, param in model.named_parameters():
        if name in zeros:
            assert (param[zeros[name]] == 0).all(), f"{name} regrew pruned weights"


def test_all_but_classifier_changes_only_the_classifier_and_keeps_bn_stats() -> None:
    model, ctx = setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    finetune(model, ctx, epochs=1, lr=0.01, freeze="all_but_classifier")
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"15.weight", "15.bias"}
    assert all(p.requires_grad for p in model.parameters()), "requires_grad is restored after training"


def test_backbone_freeze_trains_norm_layers_and_classifier_only() -> None:
    model, ctx = setup()
    before = {k: v.clone() for k, v in model.named_parameters()}
    finetune(model, ctx, epochs=1, lr=0.01, freeze="backbone")
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert "15.weight" in changed and "1.weight" in changed  # classifier and a BatchNorm
    assert not any(k in changed for k in ("0.weight", "3.weight", "7.weight", "10.weight"))  # convs
