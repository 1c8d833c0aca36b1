"""`export: [{format: openvino, quantize: none | int8}]` end to end: an IR pair written with the rest,
int8 by NNCF honouring the recipe's excluded layers, each validated and measured on OpenVINO (issue #14)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from modelshrink.cli import app
from tests.conftest import output_files

openvino = pytest.importorskip("openvino", reason="needs the [openvino] extra")
pytest.importorskip("nncf", reason="needs the [openvino] extra")
runner = CliRunner()
CNN = {"factory": "modelshrink.models.zoo:small_cnn", "kwargs": {"in_channels": 1, "width": 16}}
TARGETS = [{"format": "openvino"}, {"format": "openvino", "quantize": "int8"}]


def int8_operations(xml: Path) -> dict[str, list[str]]:
    """Per Convolution / MatMul whose weights NNCF quantized (int8 at run time): where its data input comes
    from (a Convolution folded with its batch norm has no module name of its own)."""
    model = openvino.Core().read_model(str(xml))
    found: dict[str, list[str]] = {"Convolution": [], "MatMul": []}
    for op in model.get_ops():
        if op.get_type_name() in found:
            data, weights = (port.get_source_output().get_node() for port in op.inputs()[:2])
            if weights.get_type_name() != "Constant":  # int8 constants, converted and scaled at run time
                found[op.get_type_name()].append(data.get_friendly_name())
    return found


def test_a_pruned_cnn_exports_to_openvino_fp32_and_nncf_int8(tmp_path: Path, recipe_file) -> None:
    stages = [
        {"kind": "finetune", "epochs": 2, "lr": 0.01},
        {"kind": "prune", "method": "channel", "amount": 0.5},
        {"kind": "quantize", "mode": "weight_only", "exclude": ["0", "15"]},  # the first conv, the head
    ]
    result = runner.invoke(app, ["run", str(recipe_file(model=CNN, stages=stages, export=TARGETS)), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    out = tmp_path / "out"
    ir = ["model.xml", "model.bin", "model.int8.xml", "model.int8.bin"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*output_files(), *ir])
    fp32, int8 = report["exports"]
    pruned = report["stages"][1]["metrics"]
    for entry, files in ((fp32, ir[:2]), (int8, ir[2:])):
        assert entry["source"] == "prune2" and entry["files"] == files
        assert entry["size_bytes"] == sum((out / name).stat().st_size for name in files)
        assert entry["metrics"]["params"] == pruned["params"], "the pruned shapes are exported"
        assert entry["metrics"]["latency_ms"]["batchN_median"] > 0
    assert fp32["validation"]["max_abs_error"] < 1e-4, "f32 inference precision: the same outputs"
    assert "OpenVINO computes float parts in float32" in fp32["notes"]
    assert int8["validation"]["cosine"] > 0.9 and int8["quantize"] == "int8"
    assert (out / "model.int8.bin").stat().st_size < (out / "model.bin").stat().st_size
    int8_ops = int8_operations(out / "model.int8.xml")
    assert len(int8_ops["Convolution"]) == 3 and int8_ops["MatMul"] == [], "the excluded conv and head stay float"
    assert "input/fq_output_0" not in int8_ops["Convolution"], "the first convolution (folded with its norm) is float"
    assert int8_operations(out / "model.xml") == {"Convolution": [], "MatMul": []}
    assert any(note.startswith("NNCF kept") for note in int8["notes"])
    md = (out / "report.md").read_text()
    assert "`model.int8.xml` (openvino int8, from prune2)" in md


def test_the_written_ir_reloads_with_a_dynamic_batch(tmp_path: Path, recipe_file) -> None:
    result = runner.invoke(app, ["run", str(recipe_file(model=CNN, export=[TARGETS[1]]))])
    assert result.exit_code == 0, result.output
    model = openvino.Core().read_model(str(tmp_path / "out" / "model.int8.xml"))
    assert str(model.inputs[0].get_partial_shape()) == "[?,1,8,8]"
    compiled = openvino.Core().compile_model(model, "CPU")
    for batch in (1, 5):
        assert compiled(np.zeros((batch, 1, 8, 8), np.float32))[0].shape == (batch, 10)


def test_export_command_writes_the_ir_pair_and_needs_data_to_calibrate(tmp_path: Path, recipe_file) -> None:
    recipe = recipe_file(model=CNN, stages=[])
    assert runner.invoke(app, ["run", str(recipe)]).exit_code == 0
    checkpoint = tmp_path / "out" / "model.pt"
    bad = runner.invoke(app, ["export", str(checkpoint), "--format", "openvino", "--quantize", "static"])
    assert bad.exit_code == 2 and "--quantize: Input should be 'none' or 'int8'" in bad.output
    int8 = runner.invoke(app, ["export", str(checkpoint), "--format", "openvino", "--quantize", "int8"])
    assert int8.exit_code == 2 and "name a recipe whose data to use with --data" in int8.output
    target = tmp_path / "served.xml"
    args = ["--format", "openvino", "--quantize", "int8", "--data", str(recipe), "-o", str(target)]
    result = runner.invoke(app, ["export", str(checkpoint), *args])
    assert result.exit_code == 0, result.output
    assert target.exists() and (tmp_path / "served.bin").exists(), "the weights beside the graph, by its stem"
    reloaded = openvino.Core().compile_model(str(target), "CPU")
    assert reloaded(torch.zeros(3, 1, 8, 8).numpy())[0].shape == (3, 10)
    again = runner.invoke(app, ["export", str(checkpoint), *args])
    assert again.exit_code == 2 and "already exists; pass --force" in again.output


def test_a_missing_openvino_extra_is_one_line(tmp_path: Path, recipe_file, monkeypatch: pytest.MonkeyPatch) -> None:
    import modelshrink.export as export

    monkeypatch.setattr(export, "find_spec", lambda name: None if name == "nncf" else object())
    result = runner.invoke(app, ["run", str(recipe_file(export=[{"format": "openvino", "quantize": "int8"}]))])
    assert result.exit_code == 2, result.output
    assert "needs the [openvino] extra (nncf missing): pip install 'modelshrink[openvino]'" in result.output
    assert not (tmp_path / "out").exists()
