"""`export: [{format: onnx, quantize: ...}]` end to end: files written with the rest, each validated
against the PyTorch model it came from and measured on ONNX Runtime like a stage (issue #14)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelshrink.cli import app
from modelshrink.data import build_data
from modelshrink.export.onnx import excluded_nodes, to_onnx
from modelshrink.recipe.schema import SyntheticData
from tests.conftest import output_files

pytest.importorskip("onnxruntime")
runner = CliRunner()
CNN = {"factory": "modelshrink.models.zoo:small_cnn", "kwargs": {"in_channels": 1, "width": 16}}
TARGETS = [{"format": "onnx"}, {"format": "onnx", "quantize": "dynamic"}, {"format": "onnx", "quantize": "static"}]


def test_a_pruned_cnn_exports_to_onnx_fp32_and_int8_each_validated_and_measured(tmp_path: Path, recipe_file) -> None:
    stages = [
        {"kind": "finetune", "epochs": 2, "lr": 0.01},
        {"kind": "prune", "method": "channel", "amount": 0.5},
        {"kind": "quantize", "mode": "weight_only", "exclude": ["0", "15"]},  # a conv with its batch norm, the head
    ]
    recipe = recipe_file(model=CNN, stages=stages, export=TARGETS)
    result = runner.invoke(app, ["run", str(recipe), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*output_files(), "model.onnx", "model.dynamic.onnx", "model.static.onnx"]
    )
    fp32, dynamic, static = report["exports"]
    pruned = report["stages"][1]["metrics"]
    for entry in (fp32, dynamic, static):
        assert entry["source"] == "prune2", "the float model before PyTorch quantization is exported"
        assert entry["size_bytes"] == (out / entry["file"]).stat().st_size
        assert entry["metrics"]["params"] == pruned["params"], "the pruned shapes are exported"
        assert entry["metrics"]["latency_ms"]["batch1_median"] > 0
    assert fp32["validation"]["max_abs_error"] < 1e-4 and fp32["metrics"]["cosine"] == pytest.approx(
        pruned["cosine"], abs=1e-4
    )
    assert static["size_bytes"] < fp32["size_bytes"] and static["validation"]["cosine"] > 0.95
    import onnx

    dynamic_ops = {node.op_type for node in onnx.load(out / "model.dynamic.onnx").graph.node}
    assert "ConvInteger" not in dynamic_ops and "Conv" in dynamic_ops, "dynamic int8 leaves convolutions float"
    graph = onnx.load(out / "model.static.onnx").graph
    weights = {t.name for t in graph.initializer if t.name.endswith("weight_quantized")}
    assert weights == {f"{conv}.weight_quantized" for conv in (3, 7, 10)}, "the excluded conv and head stay float"
    assert (fp32["format"], fp32["quantize"], static["quantize"]) == ("onnx", "none", "static")
    md = (out / "report.md").read_text()
    assert "## Exports" in md and "`model.static.onnx` (onnx static, from prune2)" in md


def test_excluded_layers_are_found_by_their_module_path(tmp_path: Path) -> None:
    from modelshrink.models.zoo import small_cnn

    data = build_data(SyntheticData(kind="synthetic", channels=1, image_size=8, num_samples=8), 0)
    path = tmp_path / "m.onnx"
    path.write_bytes(to_onnx(small_cnn(in_channels=1, width=8).eval(), data.example_inputs(2)))
    assert excluded_nodes(path, []) == []
    excluded = excluded_nodes(path, ["15"])  # the Linear head of the Sequential
    assert excluded and all("gemm" in name.lower() or "linear" in name.lower() for name in excluded)


def test_a_missing_extra_or_a_target_listed_twice_is_one_line(
    tmp_path: Path, recipe_file, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = recipe_file(export=[{"format": "onnx"}, {"format": "onnx", "quantize": "none"}])
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 2 and "two outputs would be written to model.onnx" in result.output
    import modelshrink.export as export

    monkeypatch.setattr(export, "find_spec", lambda name: None if name == "onnxruntime" else object())
    result = runner.invoke(app, ["run", str(recipe_file(export=[{"format": "onnx"}]))])
    assert result.exit_code == 2, result.output
    assert "needs the [onnx] extra (onnxruntime missing): pip install 'modelshrink[onnx]'" in result.output
    assert not (tmp_path / "out").exists()


def test_constraints_gate_an_export_and_a_failed_one_exits_1_with_reports(tmp_path: Path, recipe_file) -> None:
    gated = {
        "format": "onnx",
        "quantize": "dynamic",
        "constraints": {"min_cosine": 0.5, "size_bytes": {"max_ratio": 0.0001}},  # the second cannot pass
    }
    result = runner.invoke(app, ["run", str(recipe_file(export=[gated]))])
    assert result.exit_code == 1, result.output
    assert "model.dynamic.onnx size_bytes.max_ratio (limit 0.00x" in result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    verdicts = {c["name"]: c["passed"] for c in report["constraints"]}
    assert verdicts == {"model.dynamic.onnx min_cosine": True, "model.dynamic.onnx size_bytes.max_ratio": False}
    assert (tmp_path / "out" / "model.dynamic.onnx").exists(), "a failed gate still writes every output"
    earlier = str(tmp_path / "out" / "report.json")
    with_compare = {"format": "onnx", "constraints": {"compare_to": earlier, "max_regression": {"accuracy": 0.01}}}
    result = runner.invoke(app, ["run", str(recipe_file(export=[with_compare])), "--force"])
    assert result.exit_code == 2 and "compare_to is recipe-wide" in result.output


def test_export_command_exports_a_checkpoint_made_earlier(tmp_path: Path, recipe_file) -> None:
    recipe = recipe_file(model=CNN, stages=[{"kind": "prune", "method": "channel", "amount": 0.5}])
    assert runner.invoke(app, ["run", str(recipe)]).exit_code == 0
    checkpoint = tmp_path / "out" / "model.pt"
    result = runner.invoke(app, ["export", str(checkpoint)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "max abs error" in result.output
    assert (tmp_path / "out" / "model.onnx").exists()
    again = runner.invoke(app, ["export", str(checkpoint)])
    assert again.exit_code == 2 and "already exists; pass --force" in again.output
    static = runner.invoke(app, ["export", str(checkpoint), "--quantize", "static"])
    assert static.exit_code == 2 and "name a recipe whose data to use with --data" in static.output
    static = runner.invoke(app, ["export", str(checkpoint), "--quantize", "static", "--data", str(recipe)])
    assert static.exit_code == 0, static.output
    assert (tmp_path / "out" / "model.static.onnx").stat().st_size > 0


def test_export_command_refuses_a_model_that_is_no_longer_float(tmp_path: Path, recipe_file) -> None:
    recipe = recipe_file(model=CNN, stages=[{"kind": "quantize", "mode": "weight_only"}])
    assert runner.invoke(app, ["run", str(recipe)]).exit_code == 0
    result = runner.invoke(app, ["export", str(tmp_path / "out" / "model.pt")])
    assert result.exit_code == 2 and "no longer float (quantize_weight_only)" in result.output
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_onnx_runtime_tools_leave_nothing_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime's symbolic shape inference saves sym_shape_infer_temp.onnx into the current directory when
    it cannot infer every shape (it did for MiniLM); its tools run inside the scratch directory instead."""
    import types

    import onnxruntime.transformers.optimizer as optimizer

    from modelshrink.export.onnx import optimize_transformer

    def leaves_a_file(path: str, *args: object) -> object:
        Path("sym_shape_infer_temp.onnx").write_bytes(b"")  # relative: the current directory, as ORT does
        model = types.SimpleNamespace(SerializeToString=lambda: b"optimized")
        return types.SimpleNamespace(model=model, get_fused_operator_statistics=dict)

    monkeypatch.setattr(optimizer, "optimize_model", leaves_a_file)
    monkeypatch.chdir(tmp_path)
    config = types.SimpleNamespace(model_type="bert", num_attention_heads=2, hidden_size=32)
    assert optimize_transformer(b"model", config) == (b"optimized", "")
    assert list(tmp_path.iterdir()) == [] and Path.cwd() == tmp_path


def test_a_sparse_model_exports_to_a_smaller_onnx_file_that_computes_the_same(tmp_path: Path) -> None:
    """Weights with enough zeros become ONNX sparse initializers (issue #27): the file shrinks, ONNX
    Runtime opens it and gives the dense file's outputs; a dense model's file is left as it was."""
    import onnx
    import torch

    from modelshrink.export.onnx import OnnxRuntimeModel, export_onnx
    from modelshrink.export.onnx_sparse import sparsify
    from modelshrink.models.zoo import small_cnn
    from modelshrink.recipe.export_specs import OnnxExport

    torch.manual_seed(0)
    model = small_cnn(in_channels=1, width=32).eval()
    data = build_data(SyntheticData(kind="synthetic", channels=1, image_size=8, num_samples=8), 0)
    dense = to_onnx(model, data.example_inputs(2))
    assert sparsify(dense) == (dense, 0), "nothing sparse enough: the same bytes"
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                weight = module.weight
                weight.mul_(weight.abs() > weight.abs().flatten().quantile(0.9))
    pruned = to_onnx(model, data.example_inputs(2))
    exported = export_onnx(model, OnnxExport(format="onnx"), data, [], 1)
    [blob] = exported.files.values()
    onnx.checker.check_model(onnx.load_from_string(blob))
    sparse = onnx.load_from_string(blob).graph.sparse_initializer
    assert len(sparse) >= 3 and all(len(t.dims) >= 2 for t in sparse), "weights only: biases stay plain"
    assert len(blob) < 0.4 * len(pruned), (len(blob), len(pruned))
    assert any("ONNX sparse initializers" in note for note in exported.notes)
    inputs = data.example_inputs(2)
    expected = OnnxRuntimeModel(pruned, 1)(inputs)
    torch.testing.assert_close(exported.runtime(inputs), expected, rtol=0, atol=0)
    torch.testing.assert_close(expected, model(inputs), rtol=1e-4, atol=1e-5)
