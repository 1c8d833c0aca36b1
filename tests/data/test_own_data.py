"""Bring your own data: `kind: python` factories with tensor, tuple and dict inputs, labeled or not,
with their own calibration split; `kind: tensors` files; unlabeled and class-indexed image folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import modelshrink
from modelshrink.cli import app
from tests.conftest import FAST_EVAL, tiny_recipe, write_recipe
from tests.data import own

runner = CliRunner()


def run(tmp_path: Path, **sections) -> tuple[int, str, dict | None]:
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, **{"evaluate": FAST_EVAL, **sections}))
    result = runner.invoke(app, ["run", str(recipe), "--force"])
    report_path = tmp_path / "out" / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    return result.exit_code, result.stderr, report


def python_data(factory: str, **fields) -> dict:
    return {"kind": "python", "factory": f"tests.data.own:{factory}", "batch_size": 16, **fields}


def test_dict_inputs_train_prune_quantize_and_reload(tmp_path: Path) -> None:
    """Keyword inputs (input_ids + attention_mask) through every step: fit check, metrics, MACs,
    latency, training, channel pruning, static int8 (export) and a reload in a fresh process."""
    code, stderr, report = run(
        tmp_path,
        model={"factory": "tests.data.own:tokens_and_mask"},
        data=python_data("token_data", kwargs={"calibration": True}),
        stages=[
            {"kind": "finetune", "epochs": 3, "lr": 0.01},
            {"kind": "prune", "method": "channel", "amount": 0.25},
            {"kind": "quantize", "mode": "static", "calibration_batches": 1},
        ],
    )
    assert code == 0, stderr
    base, final = report["baseline"], report["final"]
    assert report["stages"][0]["metrics"]["accuracy"] > base["accuracy"] + 0.2, "trained on dict inputs"
    assert final["macs"] > 0 and final["latency_ms"]["batch1_median"] > 0
    assert final["agreement"] is not None and final["accuracy"] > base["accuracy"] + 0.2
    assert sorted(set(own.CALIBRATION_READS)) == list(range(16)), "calibrated on the whole calibration split"
    model = modelshrink.load(tmp_path / "out" / "model.pt", trust=["tests"])
    inputs = {"input_ids": torch.randint(0, 40, (3, 12)), "attention_mask": torch.ones(3, 12, dtype=torch.long)}
    assert model(**inputs).shape == (3, 4)


def test_unlabeled_tuple_inputs_are_judged_against_the_original(tmp_path: Path) -> None:
    code, stderr, report = run(
        tmp_path,
        model={"factory": "tests.data.own:image_and_vector"},
        data=python_data("image_vector_data", labeled=False),
        stages=[{"kind": "prune", "amount": 0.3}, {"kind": "distill", "epochs": 1, "keep_best": False}],
    )
    assert code == 0, stderr
    final = report["final"]
    assert final["accuracy"] is None and final["loss"] is None and final["top5"] is None, "no labels: null"
    assert 0 < final["agreement"] <= 1 and 0 < final["cosine"] <= 1
    assert final["max_abs_error"] > 0 and final["rel_error"] > 0
    assert report["baseline"]["rel_error"] == 0.0


def test_training_without_labels_is_refused_before_any_work(tmp_path: Path) -> None:
    code, stderr, report = run(
        tmp_path,
        model={"factory": "tests.data.own:image_and_vector"},
        data=python_data("image_vector_data", labeled=False),
        stages=[{"kind": "finetune"}],
    )
    assert code == 2 and report is None
    assert "stage 'finetune' trains, which needs labels: yield (input, target) items" in stderr


@pytest.mark.parametrize(
    ("factory", "fields", "message"),
    [
        ("not_datasets", {}, "returned list; return (train, val) Datasets"),
        ("broken_factory", {}, "broken_factory(**kwargs) failed: RuntimeError: cannot open /data/train"),
        ("token_data", {"kwargs": {"labeled": False}}, "an item is dict, not an (input, target) pair"),
        ("token_data", {"kwargs": {"colour": 1}}, "TypeError"),
        ("no_such_function", {}, "has no callable 'no_such_function'"),
    ],
)
def test_factory_mistakes_are_one_line(tmp_path: Path, factory: str, fields: dict, message: str) -> None:
    code, stderr, report = run(tmp_path, data=python_data(factory, **fields))
    assert code == 2 and report is None
    assert stderr.count("error:") == 1 and message in stderr and "Traceback" not in stderr


def test_regression_targets_train_with_the_users_loss_and_gate_on_their_metric(tmp_path: Path) -> None:
    sections = {
        "model": {"factory": "tests.data.own:regressor"},
        "data": python_data("regression_data"),
        "evaluate": {
            **FAST_EVAL,
            "metrics": [{"function": "tests.data.own:regression_metrics", "lower_is_better": ["mae"]}],
        },
    }
    recipe = tiny_recipe(tmp_path, **sections, stages=[{"kind": "finetune", "epochs": 2}])
    result = runner.invoke(app, ["run", str(write_recipe(tmp_path / "r.yaml", recipe))])
    assert result.exit_code == 2 and "needs loss: 'pkg.module:fn'" in result.stderr

    trained = [{"kind": "finetune", "epochs": 8, "lr": 0.01, "loss": "tests.data.own:mse"}]
    recipe = tiny_recipe(tmp_path, **sections, stages=trained, constraints={"mae": {"max_ratio": 0.8}})
    result = runner.invoke(app, ["run", str(write_recipe(tmp_path / "r.yaml", recipe))])
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["custom_metrics"] == {"mae": "lower", "within_half": "higher"}
    assert report["final"]["custom"]["mae"] < 0.8 * report["baseline"]["custom"]["mae"]
    assert report["final"]["accuracy"] is None and report["final"]["agreement"] is None, "not a classifier"
    assert any(c["name"] == "mae.max_ratio" and c["passed"] for c in report["constraints"])
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| mae |" in markdown or " mae " in markdown
    assert "mae" in result.stdout and "within_half" in result.stdout, "the CLI table shows them"


def write_tensor_file(path: Path, inputs: np.ndarray, targets: np.ndarray | None) -> Path:
    named = {"x": inputs} if targets is None else {"x": inputs, "y": targets}
    if path.suffix == ".npz":
        np.savez(path, **named)
    elif path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(named, str(path))
    else:
        torch.save({k: torch.from_numpy(v) for k, v in named.items()}, path)
    return path


@pytest.mark.parametrize("suffix", [".pt", ".npz", ".safetensors"])
def test_tensor_files(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(90) % 10
    images = (rng.normal(size=(90, 1, 8, 8)) + labels[:, None, None, None]).astype(np.float32)
    path = write_tensor_file(tmp_path / f"data{suffix}", images, labels)
    code, stderr, report = run(tmp_path, data={"kind": "tensors", "path": str(path), "inputs": "x", "targets": "y"})
    assert code == 0, stderr
    assert report["baseline"]["accuracy"] is not None and report["baseline"]["top5"] is not None

    code, stderr, _ = run(tmp_path, data={"kind": "tensors", "path": str(path), "inputs": "images"})
    assert code == 2 and "has no tensor 'images' with a sample dimension (keys: x, y)" in stderr

    images[3, 0, 0, 0] = np.nan
    path = write_tensor_file(tmp_path / f"nan{suffix}", images, labels[:-1])
    code, stderr, _ = run(tmp_path, data={"kind": "tensors", "path": str(path), "inputs": "x", "targets": "y"})
    assert code == 2 and "'x' holds NaN or Inf" in stderr
    path = write_tensor_file(tmp_path / f"short{suffix}", np.nan_to_num(images), labels[:-1])
    code, stderr, _ = run(tmp_path, data={"kind": "tensors", "path": str(path), "inputs": "x", "targets": "y"})
    assert code == 2 and "90 inputs but 89 targets" in stderr


def test_a_pickle_posing_as_a_tensor_file_runs_nothing(tmp_path: Path) -> None:
    import pickle

    canary = tmp_path / "canary"

    class Payload:
        def __reduce__(self):
            return (open, (str(canary), "w"))

    path = tmp_path / "data.pt"
    path.write_bytes(pickle.dumps({"inputs": Payload()}))
    code, stderr, _ = run(tmp_path, data={"kind": "tensors", "path": str(path)})
    assert code == 2 and "cannot read" in stderr and not canary.exists()


def photos(root: Path, count: int, folders: list[str] | None = None) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / (folders[i % len(folders)] if folders else f"deep/er/{i % 2}")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_unlabeled_image_tree_serves_calibration_and_agreement(tmp_path: Path) -> None:
    root = photos(tmp_path / "photos", 12)
    (root / "notes.txt").write_text("not an image")
    model = {"torchvision": "resnet18", "kwargs": {"num_classes": 1000}}
    data = {"kind": "imagefolder", "path": str(root), "labels": False, "image_size": 32, "batch_size": 4,
            "val_fraction": 0.5}  # fmt: skip
    # one backend, eager: the unlabeled folder is what is tested, not the int8 backend's choice (compiling)
    stages = [{"kind": "quantize", "mode": "static", "calibration_batches": 1, "backend": "fx", "compile": False}]
    code, stderr, report = run(tmp_path, model=model, data=data, stages=stages, constraints={"agreement": {"min": 0}})
    assert code == 0, stderr
    assert report["final"]["accuracy"] is None
    assert report["final"]["agreement"] is not None and report["constraints"][0]["passed"]


def test_class_folders_named_by_the_models_own_class_indices(tmp_path: Path) -> None:
    root = photos(tmp_path / "photos", 12, folders=["3", "7"])
    model = {"torchvision": "resnet18", "kwargs": {"num_classes": 10}}
    data = {"kind": "imagefolder", "path": str(root), "class_index": "indices", "image_size": 32, "batch_size": 4}
    code, stderr, report = run(tmp_path, model=model, data=data, stages=[])
    assert code == 0, stderr
    assert report["baseline"]["accuracy"] is not None and not math.isnan(report["baseline"]["accuracy"])

    (root / "cats").mkdir()
    photos(root / "cats", 1, folders=["."])
    code, stderr, _ = run(tmp_path, model=model, data=data, stages=[])
    assert code == 2 and "folder 'cats' is not a class index" in stderr

    model = {"torchvision": "resnet18", "kwargs": {"num_classes": 5}}
    (root / "cats").rename(root / "9")
    code, stderr, _ = run(tmp_path, model=model, data=data, stages=[])
    assert code == 2 and "model outputs 5 classes but the data has class index 9" in stderr


def test_a_separate_held_out_set_reports_quality(tmp_path: Path) -> None:
    """evaluate.data: all of it reports (and gates); the recipe's data only trains and calibrates."""
    rng = np.random.default_rng(1)
    labels = np.arange(50) % 10
    held_out = write_tensor_file(tmp_path / "held_out.npz", rng.normal(size=(50, 1, 8, 8)).astype(np.float32), labels)
    evaluate = {**FAST_EVAL, "metrics": ["tests.data.own:count_samples"]}
    evaluate["data"] = {"kind": "tensors", "path": str(held_out), "inputs": "x", "targets": "y", "batch_size": 8}
    code, stderr, report = run(tmp_path, evaluate=evaluate, constraints={"min_accuracy": 0.0})
    assert code == 0, stderr
    assert report["baseline"]["custom"]["samples"] == 50, "every held-out sample, none of the recipe's data"
    assert report["recipe"]["evaluate"]["data"]["path"] == str(held_out)

    del evaluate["data"]["targets"]
    code, stderr, report = run(tmp_path, evaluate=evaluate, constraints={"min_accuracy": 0.0})
    assert code == 2 and "constraints.min_accuracy needs labels: name the targets with data.targets" in stderr
