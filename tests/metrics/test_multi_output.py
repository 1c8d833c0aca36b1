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
    dominant = [f for f in plain.notes.findings if f.startswith("output boxes took")]
    assert (
        dominant and "weigh it down with `outputs: {boxes: {weight: 0.1}}` or turn normalize_outputs on" in dominant[0]
    )
    assert not any("took" in f for f in normalized.notes.findings)
    assert any(f.startswith("teacher loss per output: boxes ") for f in normalized.notes.findings)


def test_distillation_outputs_must_name_outputs_of_the_model() -> None:
    stages = [{"kind": "distill", "epochs": 1, "outputs": {"landmarks": {"weight": 2.0}}}]
    with pytest.raises(
        UserError, match=r"distill outputs: the model has no output named landmarks \(its outputs: boxes, scores\)"
    ):
        compress(two_heads(), stages, data=unlabeled(), evaluate=FAST_EVAL)


def test_a_sample_whose_outputs_equal_the_references_has_cosine_one_even_where_they_are_zeros() -> None:
    from modelshrink.metrics.similarity import sample_cosines

    zeros, ones = torch.zeros(2, 3), torch.ones(2, 3)
    assert sample_cosines(zeros, zeros).tolist() == [1.0, 1.0], "torch's cosine of two zero rows is 0"
    assert sample_cosines(ones, zeros).tolist() == [0.0, 0.0], "a zero reference is not matched by ones"
    relu = nn.Sequential(nn.Flatten(), nn.Linear(48, 4), nn.ReLU()).eval()
    with torch.no_grad():
        relu[1].bias.fill_(-100.0)  # every output a zero
    data = unlabeled(64)
    _, reference = evaluate_outputs(relu, data.val, labeled=False)
    metrics, _ = evaluate_outputs(relu, data.val, labeled=False, reference=reference)
    assert metrics["cosine"] == 1.0, "the model itself is as close to itself as can be"


def test_outputs_whose_keys_join_alike_keep_names_of_their_own() -> None:
    from modelshrink.inputs import output_names

    x = torch.zeros(2, 3)
    assert output_names({"boxes": x, "scores": [x, x]}) == ["boxes", "scores.0", "scores.1"]
    assert output_names({"a.b": x, "c": x}) == ["a.b", "c"], "a key's own dot is kept"
    names = output_names({"a.b": x, "a": {"b": x}})
    assert len(set(names)) == 2 and names == ["['a.b']", "['a']['b']"]


def test_timed_choices_judge_a_model_by_its_worst_output() -> None:
    from modelshrink.stages.quantize import choose

    model = two_heads().eval()
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.scores.weight.mul_(-1)
    batches = [(torch.randn(16, 3, 4, 4),)]
    assert choose.cosine(broken, model, batches) < 0, "joined, the boxes would have hidden the reversed scores"
    assert choose.cosine(model, model, batches) == 1.0


def test_distillation_outputs_that_cannot_teach_are_refused_and_positions_may_be_yaml_integers() -> None:
    from modelshrink.recipe.parse import parse_recipe

    zero = [{"kind": "distill", "epochs": 1, "outputs": {"boxes": {"weight": 0}, "scores": {"weight": 0}}}]
    with pytest.raises(UserError, match="every output has weight 0"):
        compress(two_heads(), zero, data=unlabeled(), evaluate=FAST_EVAL)
    single = [{"kind": "distill", "epochs": 1, "outputs": {"output": {"weight": 2}}}]
    with pytest.raises(UserError, match="the model has one output, so there is nothing to weigh"):
        compress(nn.Sequential(nn.Flatten(), nn.Linear(48, 4)), single, data=unlabeled(), evaluate=FAST_EVAL)
    text = """
model: {factory: "modelshrink.models.zoo:mlp"}
data: {kind: synthetic}
stages: [{kind: distill, outputs: {0: {weight: 2.0}, 1: {loss: kl}}}]
constraints: {outputs: {1: {min_cosine: 0.9}}}
output: {dir: out}
"""
    recipe = parse_recipe(text)
    assert set(recipe.stages[0].outputs) == {"0", "1"} and set(recipe.constraints.outputs) == {"1"}
