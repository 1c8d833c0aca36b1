"""A model with several outputs (a detector's boxes and scores) is judged, gated and distilled per
output: one cosine over all outputs joined, and one MSE over them, let the large regression hide the
small scores."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from modelshrink.engine import compress
from modelshrink.errors import UserError
from modelshrink.metrics.accuracy import evaluate_outputs
from tests.conftest import FAST_EVAL, tensor_data


class TwoHeads(nn.Module):
    """Boxes a hundred times larger than the scores, as pixel coordinates are beside logits."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU())
        self.boxes, self.scores = nn.Linear(32, 8), nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(x)
        return {"boxes": 100 * self.boxes(features), "scores": self.scores(features)}


def two_heads() -> nn.Module:
    torch.manual_seed(0)
    return TwoHeads()


def unlabeled(samples: int = 256):
    torch.manual_seed(1)
    return tensor_data(torch.randn(samples, 3, 4, 4), labeled=False, class_targets=False, batch_size=32)


def test_each_output_is_measured_and_the_worst_is_the_models_cosine() -> None:
    data = unlabeled()
    model = two_heads().eval()
    _, reference = evaluate_outputs(model, data.val, labeled=False)
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.scores.weight.mul_(-1)  # scores reversed, boxes untouched
    metrics, _ = evaluate_outputs(broken, data.val, labeled=False, reference=reference)
    each = metrics["outputs"]
    assert set(each) == {"boxes", "scores"}
    assert each["boxes"]["cosine"] == pytest.approx(1.0) and each["scores"]["cosine"] < 0
    assert metrics["cosine"] == each["scores"]["cosine"], "the model is as good as its worst output"
    assert metrics["rel_error"] == each["scores"]["rel_error"] > each["boxes"]["rel_error"]
    joined = torch.nn.functional.cosine_similarity(  # what one cosine over all outputs joined said
        *(torch.cat([m(x)["boxes"], m(x)["scores"]], dim=1) for m in (broken, model) for x in [data.val.dataset[:][0]])
    )
    assert joined.mean() > 0.99, "joined, the boxes' scale hides the reversed scores"


def test_a_run_reports_and_gates_each_output_and_an_unknown_output_is_one_line(recipe_file) -> None:
    from typer.testing import CliRunner

    from modelshrink.cli import app

    boxes = {
        "model": {"factory": "examples.boxes:model", "kwargs": {"width": 8, "image_size": 16}},
        "data": {"kind": "python", "factory": "examples.boxes:data", "batch_size": 32,
                 "kwargs": {"train": 64, "val": 64, "image_size": 16}},
        "stages": [{"kind": "prune", "amount": 0.6, "scope": "layer"}],
    }  # fmt: skip
    gates = {"outputs": {"scores": {"max_rel_error": 1e-9}, "boxes": {"min_cosine": -1.0}}}
    result = CliRunner().invoke(app, ["run", str(recipe_file(**boxes, constraints=gates)), "--json"])
    assert result.exit_code == 1, result.output  # the scores gate fails, reports written
    report = json.loads(result.stdout)
    each = report["final"]["outputs"]
    assert set(each) == {"boxes", "scores"} and report["final"]["cosine"] == min(o["cosine"] for o in each.values())
    verdicts = {g["name"]: g["passed"] for g in report["constraints"]}
    assert verdicts == {"outputs.boxes.min_cosine": True, "outputs.scores.max_rel_error": False}
    out = Path(report["recipe"]["output"]["dir"])
    assert "## Outputs (cosine to the original model's, per output)" in (out / "report.md").read_text()

    unknown = {"outputs": {"landmarks": {"min_cosine": 0.9}}}
    result = CliRunner().invoke(app, ["run", str(recipe_file(**boxes, constraints=unknown)), "--force"])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: constraints.outputs.landmarks: the model has no output of that name (its outputs: boxes, scores)"
    ]
    assert "stage prune1" not in result.stderr, "refused once the baseline is measured, before any stage"


def distilled(normalize: bool) -> dict:
    stages = [
        {"kind": "prune", "amount": 0.6, "scope": "layer"},
        {"kind": "distill", "epochs": 4, "lr": 0.003, "normalize_outputs": normalize},
    ]
    return compress(two_heads(), stages, data=unlabeled(512), evaluate=FAST_EVAL).stages[-1]


def test_distillation_weighs_outputs_by_their_scale_and_says_when_one_dominates() -> None:
    plain, normalized = distilled(normalize=False), distilled(normalize=True)
    scores = [s.metrics["outputs"]["scores"]["cosine"] for s in (plain, normalized)]
    assert scores[1] > scores[0], "scaled to its teacher, the small output learns too"
    assert any("output boxes took" in f and "of the teacher loss" in f for f in plain.notes["findings"])
    assert not any("took" in f for f in normalized.notes["findings"])
    assert any(f.startswith("teacher loss per output: boxes ") for f in normalized.notes["findings"])


def test_distillation_outputs_must_name_outputs_of_the_model() -> None:
    stages = [{"kind": "distill", "epochs": 1, "outputs": {"landmarks": {"weight": 2.0}}}]
    with pytest.raises(
        UserError, match=r"distill outputs: the model has no output named landmarks \(its outputs: boxes, scores\)"
    ):
        compress(two_heads(), stages, data=unlabeled(), evaluate=FAST_EVAL)
