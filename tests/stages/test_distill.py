"""Distillation: the student learns from the teacher (also through hint projections when it is
narrower), pruned zeros stay zero, and the comparison with plain fine-tuning is reported."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from modelshrink.data import build_data
from modelshrink.engine import compress
from modelshrink.metrics.accuracy import evaluate_classifier
from modelshrink.models.zoo import small_cnn
from modelshrink.recipe.schema import SyntheticData
from modelshrink.report import findings

FAST = {"latency": {"batch_size": 2, "warmup": 0, "iterations": 1}}
CNN = {"factory": "modelshrink.models.zoo:small_cnn", "kwargs": {"in_channels": 1, "width": 16}}


def trained_teacher(tmp_path: Path) -> tuple[nn.Module, object, Path]:
    """A small CNN trained on synthetic data, the data, and the teacher saved as a plain state_dict."""
    data = build_data(SyntheticData(kind="synthetic", channels=1, image_size=8, num_samples=320, batch_size=32), 0)
    teacher = compress(small_cnn(in_channels=1, width=16), [{"kind": "finetune", "epochs": 8, "lr": 0.01}], data=data,
                       evaluate=FAST).model  # fmt: skip
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    return teacher, data, tmp_path / "teacher.pt"


def test_distilling_a_channel_pruned_student_with_hints(tmp_path: Path) -> None:
    teacher, data, teacher_file = trained_teacher(tmp_path)
    assert evaluate_classifier(teacher, data.val)["accuracy"] > 0.9
    prune = {"kind": "prune", "method": "channel", "amount": 0.5, "importance": "random"}
    student = compress(copy.deepcopy(teacher), [prune], data=data, evaluate=FAST).model
    student.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)  # forget everything
    assert student[10].out_channels == 16 and teacher[10].out_channels == 32
    with torch.no_grad():
        student[0].weight[:2] = 0  # unstructured zeros too: they must survive distillation
    before = evaluate_classifier(student, data.val)["accuracy"]
    distill = {
        "kind": "distill", "name": "kd", "teacher": {**CNN, "checkpoint": str(teacher_file)}, "epochs": 8, "lr": 0.01,
        "hints": [{"student": "10", "teacher": "10"}], "compare_finetune": True,
    }  # fmt: skip
    result = compress(student, [distill], data=data, evaluate=FAST)
    after = evaluate_classifier(result.model, data.val)["accuracy"]
    assert after > max(before, 0.8)
    assert (result.model[0].weight[:2] == 0).all()
    [stage] = result.stages
    compared = stage.notes.comparison
    assert compared is not None and compared.distill_accuracy == after and isinstance(compared.distillation_won, bool)
    assert any(
        "plain fine-tuning with the same settings" in note for note in findings(result.baseline, [stage.to_json()])
    )


class Relabelled(nn.Module):
    """A teacher that is confidently wrong: the trained model's classes shifted by one."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).roll(1, dims=1)


def relabelled_cnn() -> nn.Module:
    """The factory a teacher checkpoint of `Relabelled` is loaded into."""
    return Relabelled(small_cnn(in_channels=1, width=16))


def test_the_loss_follows_the_teacher_at_alpha_one(tmp_path: Path) -> None:
    trained, data, _ = trained_teacher(tmp_path)
    teacher = Relabelled(trained).eval()
    torch.save(teacher.state_dict(), tmp_path / "relabelled.pt")
    source = {"factory": "tests.stages.test_distill:relabelled_cnn", "checkpoint": str(tmp_path / "relabelled.pt")}
    # keep_best off: selection by label accuracy would rightly refuse to imitate a wrong teacher
    spec = {"kind": "distill", "teacher": source, "epochs": 6, "lr": 0.01, "alpha": 1.0, "temperature": 2.0,
            "keep_best": False}  # fmt: skip
    student = compress(small_cnn(in_channels=1, width=16), [spec], data=data, evaluate=FAST).model
    inputs, labels = (torch.cat(parts) for parts in zip(*data.val, strict=True))
    with torch.no_grad():
        predicted, taught = student(inputs).argmax(1), teacher(inputs).argmax(1)
    assert (predicted == taught).float().mean() > 0.8, "trained on soft targets alone, the student imitates the teacher"
    assert (predicted == labels).float().mean() < 0.3, "the labels play no part at alpha 1"
