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
from modelshrink.runtimes.sessions import openvino_config
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


def sparse_mlp() -> torch.nn.Module:
    """Linear layers (OpenVINO MatMuls) with 90% of their weights zero."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
    ).eval()
    with torch.no_grad():
        for layer in (model[1], model[3]):
            layer.weight.mul_(layer.weight.abs() > layer.weight.abs().quantile(0.9))
    return model


@pytest.fixture
def mlp_data():
    from modelshrink.data import build_data
    from modelshrink.recipe.schema import SyntheticData

    return build_data(SyntheticData(kind="synthetic", channels=1, image_size=8, num_samples=16), 0)


def sparse_export(data, amx: bool, monkeypatch: pytest.MonkeyPatch, model=None, **spec):
    from modelshrink.export import openvino_sparse
    from modelshrink.export.openvino import export_openvino
    from modelshrink.recipe.export_specs import OpenVinoExport

    monkeypatch.setattr(openvino_sparse, "has_cpu_feature", lambda name: amx and name == "amx_int8")
    target = OpenVinoExport(format="openvino", quantize="int8", calibration_batches=2, **spec)
    return export_openvino(model or sparse_mlp(), target, data, [], 1)


def test_sparse_decompression_is_off_with_one_line_on_a_cpu_without_amx(mlp_data, monkeypatch) -> None:
    exported = sparse_export(mlp_data, False, monkeypatch)
    assert exported.runtime.sparse_rate is None and exported.runtime.isolated()[1]["sparse_rate"] is None
    [line] = [note for note in exported.notes if "sparse weight decompression" in note]
    assert line == "sparse weight decompression off: this CPU lacks AMX (amx_int8), which OpenVINO's sparse int8 " \
        "kernels need"  # fmt: skip
    forced = sparse_export(mlp_data, False, monkeypatch, sparse_decompression=0.7)
    assert forced.runtime.sparse_rate == 0.7 and "runs the weights dense here" in forced.notes[-1]
    assert forced.runtime.compiled.get_property("CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE") == pytest.approx(0.7)
    # OpenVINO 2024.6 refuses the rate as a Python float (seen on an AMX Xeon); every version takes "0.7"
    assert openvino_config(1, "f32", 0.7)["CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"] == "0.7"


@pytest.mark.parametrize(
    ("sparse_slowness", "faster"),
    [(2.0, "dense"), (0.5, "sparse (rate 0.5)"), (0.97, "dense")],  # 3% faster: noise, not a reason to deploy
)
def test_on_an_amx_cpu_auto_times_dense_against_sparse_and_keeps_the_faster(
    sparse_slowness: float, faster: str, mlp_data, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Off AMX, OpenVINO ignores the property, so the timing here cannot tell them apart: the measured
    trials are kept and only which is faster is decided by the test."""
    from dataclasses import replace

    from modelshrink.stages.quantize import choose

    measured, timed = choose.measure, []

    def measure_with_a_winner(*args):
        trials = measured(*args)
        timed.append(trials)
        return [replace(t, slowness=1.0 if t.name == "dense" else sparse_slowness) for t in trials]

    monkeypatch.setattr(choose, "measure", measure_with_a_winner)
    exported = sparse_export(mlp_data, True, monkeypatch)
    [trials] = timed
    assert [t.name for t in trials] == ["dense", "sparse (rate 0.5)"] and all(set(t.ms) == {1} for t in trials)
    assert abs(trials[0].cosine - trials[1].cosine) < 1e-6, "packing the zeros out changes no output"
    rate = None if faster == "dense" else 0.5
    assert exported.runtime.sparse_rate == rate and exported.runtime.isolated()[1]["sparse_rate"] == rate
    chosen = next(note for note in exported.notes if note.startswith("OpenVINO sparse weight decompression (AMX)"))
    assert f": {faster} (dense: cosine" in chosen, chosen
    deploy = "deploy the IR with the CPU property CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE=0.5"
    assert (deploy in exported.notes) == (rate is not None)
    dense = sparse_export(mlp_data, True, monkeypatch, model=torch.nn.Sequential(torch.nn.Flatten(),
                                                                                  torch.nn.Linear(64, 10)))  # fmt: skip
    assert dense.runtime.sparse_rate is None and len(timed) == 1, "nothing sparse: nothing to time"
    assert "no Linear weight OpenVINO can pack (both sizes multiples of 64) is 50% zeros" in dense.notes[-1]
    # 90% zeros in a layer of 10 outputs: OpenVINO's CPU plugin would leave it dense, so nothing is timed
    unpackable = sparse_mlp()[:2]
    unpackable[1] = torch.nn.Linear(64, 10)
    with torch.no_grad():
        unpackable[1].weight.mul_(unpackable[1].weight.abs() > unpackable[1].weight.abs().quantile(0.9))
    skipped = sparse_export(mlp_data, True, monkeypatch, model=unpackable)
    assert skipped.runtime.sparse_rate is None and len(timed) == 1, skipped.notes
    assert "(the sparsest: 0.0%)" in skipped.notes[-1]
