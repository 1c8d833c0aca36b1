"""The must-have of issue #25, end to end: the same model's latency in a run with exports (ONNX Runtime
and OpenVINO measured too) and in one without agree within noise, also while another process keeps a
core busy, as on a shared CI runner."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from typer.testing import CliRunner

from modelshrink.cli import app

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

# medians of one model in two runs, one core taken by another process: on a 2-core VM two runs without
# exports differed by up to 1.32x (and once 1.36x with), so 1.5; the fault this guards against, another
# runtime's threads spinning beside PyTorch, made it 2.7x slower
AGREE = 1.5


@contextmanager
def busy_core() -> Iterator[None]:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


@pytest.mark.slow
def test_a_models_latency_is_the_same_with_and_without_exports_in_the_run(recipe_file) -> None:
    sections = {
        "model": {"torchvision": "resnet18", "num_classes": 10},
        "data": {"kind": "synthetic", "channels": 3, "image_size": 32, "num_samples": 64, "batch_size": 16},
        "stages": [{"kind": "prune", "amount": 0.3}],
        # one thread: the other core is the busy one's (more threads than idle cores is noise, and flagged)
        "evaluate": {"latency": {"batch_size": 8, "warmup": 5, "iterations": 60, "threads": 1}},
    }
    exports = [{"format": "onnx"}, {"format": "openvino"}]
    runs = {}
    with busy_core():
        for label, extra in (("alone", {}), ("with exports", {"export": exports}), ("alone again", {})):
            result = CliRunner().invoke(app, ["run", str(recipe_file(**sections, **extra)), "--json", "--force"])
            assert result.exit_code == 0, result.output
            runs[label] = json.loads(result.stdout)
    for size in ("batch1_median", "batchN_median"):
        times = {label: report["baseline"]["latency_ms"][size] for label, report in runs.items()}
        assert max(times.values()) <= AGREE * min(times.values()), times
    assert [e["file"] for e in runs["with exports"]["exports"]] == ["model.onnx", "model.xml"]
