"""Distillation: the student learns from the teacher (also through hint projections when it is
narrower), pruned zeros stay zero, and the comparison with plain fine-tuning is reported."""

from __future__ import annotations

import copy

import torch
from torch import nn

from modelshrink.data import build_data
from modelshrink.lineage import Lineage
from modelshrink.metrics.accuracy import evaluate_classifier
from modelshrink.models.zoo import small_cnn
from modelshrink.recipe.schema import EvaluateSpec, SyntheticData
from modelshrink.recipe.stage_specs import DistillSpec, FinetuneSpec
from modelshrink.report import findings
from modelshrink.stages import make_stage
from modelshrink.stages.base import StageContext
from modelshrink.stages.distill import DistillStage
from modelshrink.stages.finetune import FinetuneStage


def trained_teacher() -> tuple[nn.Module, StageContext]:
    data = build_data(SyntheticData(kind="synthetic", channels=1, image_size=8, num_samples=320, batch_size=32), 0)
    teacher = small_cnn(in_channels=1, width=16)
    ctx = StageContext(
        data=data, original_model=teacher, lineage=Lineage({"factory": "x:y"}), evaluate=EvaluateSpec(), seed=0
    )
    FinetuneStage(FinetuneSpec(kind="finetune", epochs=8, lr=0.01), "t").apply(teacher, ctx)
    return teacher, ctx


def test_distilling_a_channel_pruned_student_with_hints() -> None:
    teacher, ctx = trained_teacher()
    assert evaluate_classifier(teacher, ctx.data.val)["accuracy"] > 0.9
    ctx.original_model = copy.deepcopy(teacher)
    student = make_stage(dict(kind="prune", method="channel", amount=0.5, importance="random"), "p").apply(teacher, ctx)
    student.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)  # forget everything
    assert student[10].out_channels == 16 and ctx.original_model[10].out_channels == 32
    with torch.no_grad():
        student[0].weight[:2] = 0  # unstructured zeros too: they must survive distillation
    before = evaluate_classifier(student, ctx.data.val)["accuracy"]
    spec = DistillSpec(
        kind="distill", epochs=8, lr=0.01, hints=[{"student": "10", "teacher": "10"}], compare_finetune=True
    )
    DistillStage(spec, "kd").apply(student, ctx)
    after = evaluate_classifier(student, ctx.data.val)["accuracy"]
    assert after > max(before, 0.8)
    assert (student[0].weight[:2] == 0).all()
    compared = ctx.notes["kd"]["compare_finetune"]
    assert compared["distill_accuracy"] == after and isinstance(compared["distillation_won"], bool)
    stage = {
        "name": "kd",
        "kind": "distill",
        "params": {},
        "notes": ctx.notes["kd"],
        "metrics": {"accuracy": after, "latency_ms": {"batch1_median": 1, "batchN_median": 1}},
    }
    latency = {"batch1_median": 1, "batchN_median": 1, "batch1_p95": 1, "batchN_p95": 1}
    base = {"accuracy": before, "latency_ms": latency}
    assert any("plain fine-tuning with the same settings" in note for note in findings(base, [stage]))


class Relabelled(nn.Module):
    """A teacher that is confidently wrong: the trained model's classes shifted by one."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).roll(1, dims=1)


def test_the_loss_follows_the_teacher_at_alpha_one() -> None:
    trained, ctx = trained_teacher()
    teacher = Relabelled(trained).eval()
    ctx.original_model = teacher
    student = small_cnn(in_channels=1, width=16)
    # keep_best off: selection by label accuracy would rightly refuse to imitate a wrong teacher
    spec = DistillSpec(kind="distill", epochs=6, lr=0.01, alpha=1.0, temperature=2.0, keep_best=False)
    DistillStage(spec, "kd").apply(student, ctx)
    inputs, labels = (torch.cat(parts) for parts in zip(*ctx.data.val, strict=True))
    with torch.no_grad():
        predicted, taught = student(inputs).argmax(1), teacher(inputs).argmax(1)
    assert (predicted == taught).float().mean() > 0.8, "trained on soft targets alone, the student imitates the teacher"
    assert (predicted == labels).float().mean() < 0.3, "the labels play no part at alpha 1"
