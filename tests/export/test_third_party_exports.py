"""Every export format and the optimize stage on a model that is not ours: a factory whose forward checks
the input size and branches on a config flag (torch.fx cannot trace it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelshrink.cli import app

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
runner = CliRunner()


def test_a_third_party_cnn_is_optimized_and_exported_to_every_format(tmp_path: Path, recipe_file) -> None:
    recipe = recipe_file(
        model={"factory": "tests.stages.test_pt2e:Picky"},
        data={"kind": "synthetic", "channels": 3, "image_size": 32, "num_samples": 64, "batch_size": 16},
        stages=[{"kind": "optimize"}],
        export=[
            {"format": "onnx", "quantize": "static"},
            {"format": "openvino", "quantize": "int8"},
            {"format": "pt2"},
        ],
    )
    result = runner.invoke(app, ["run", str(recipe), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "folded 2 of 2 batch norms" in report["stages"][0]["notes"]["findings"][0]
    onnx, openvino, pt2 = report["exports"]
    assert pt2["validation"]["max_abs_error"] < 1e-4, "the optimized float model, packaged"
    for entry in (onnx, openvino):
        assert entry["validation"]["cosine"] > 0.95 and entry["metrics"]["latency_ms"]["batch1_median"] > 0
