"""Static int8 for models torch.fx cannot trace: torch.export + torchao PT2E, rebuilt from the checkpoint
in a fresh process with the same outputs (issue #12, item 1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from modelshrink.checkpoint import from_bytes, to_bytes
from modelshrink.engine import compress
from modelshrink.errors import UserError
from tests.conftest import FAST_EVAL

pytest.importorskip("torchao")
REPO = Path(__file__).resolve().parents[2]
DATA = {"kind": "synthetic", "channels": 3, "image_size": 32, "num_samples": 64, "batch_size": 16}


class Picky(nn.Module):
    """A third-party style CNN: its forward checks the input size and branches on a config flag."""

    def __init__(self, scale_logits: bool = True, num_classes: int = 10):
        super().__init__()
        self.scale_logits = scale_logits
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())  # fmt: skip
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (32, 32):
            raise ValueError(f"expects 32x32 images, got {tuple(x.shape[-2:])}")
        logits = self.head(self.features(x).mean((2, 3)))
        if self.scale_logits:
            logits = logits * 0.5
        return logits


class ValueDependent(nn.Module):
    """Branches on tensor values: neither torch.fx nor torch.export can capture that."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:
            y = -y
        return self.head(y.mean((2, 3)))


SOURCE = {"factory": "tests.stages.test_pt2e:Picky", "kwargs": {"scale_logits": True}}
# a fresh process reloads the checkpoint and saves its outputs: eager (gradients on), then compiled
# (inference), with the number of calls that compiled
RELOAD = (
    "import sys, torch, modelshrink\n"
    "m = modelshrink.load(sys.argv[1], trust=['tests.stages.test_pt2e', 'timm'])\n"
    "x = torch.load(sys.argv[2])\n"
    "eager = m(x).detach()\n"
    "with torch.inference_mode():\n"
    "    deployed = m(x)\n"
    "torch.save((eager, deployed, m.compile_time[1]), sys.argv[3])\n"
)


def test_a_model_fx_cannot_trace_is_quantized_through_export_and_reloads_in_a_fresh_process(tmp_path: Path) -> None:
    result = compress(SOURCE, [{"kind": "quantize", "mode": "static"}], data=DATA, evaluate=FAST_EVAL)
    [stage] = result.stages
    assert "torch.fx" in stage.notes.findings[0] and "PT2E" in stage.notes.findings[0]
    assert [t.kind for t in result.lineage.transforms] == ["quantize_pt2e", "compile"], "PT2E int8 runs compiled"
    assert stage.metrics["cosine"] > 0.99
    weights = {k: v.dtype for k, v in result.model.state_dict().items() if v.dim() == 4}
    assert set(weights.values()) == {torch.int8}, "conv weights are int8, their float copies dropped"
    assert stage.metrics["params"] == result.baseline["params"] - 64, "int8 weights count; the 2 BNs (64) are folded"
    latency = stage.metrics["latency_ms"]
    assert latency["compile_s"] > 0 and latency["compiles"] >= 1, "compile time is reported apart"
    path = tmp_path / "model.pt"
    path.write_bytes(to_bytes(result.model, result.lineage, (3, 32, 32)))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    subprocess.run([sys.executable, "-c", RELOAD, str(path), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                   check=True, cwd=REPO)  # fmt: skip
    eager, deployed, compiles = torch.load(tmp_path / "y.pt")
    assert torch.equal(eager, result.model(x))
    assert compiles >= 1, "the reloaded model compiles on its first inference call"
    with torch.inference_mode():
        torch.testing.assert_close(deployed, result.model(x), rtol=1e-4, atol=1e-4)


def test_backend_pt2e_on_torchvision_resnet18_keeps_outputs_and_rebuilds() -> None:
    source = {"torchvision": "resnet18", "num_classes": 10}
    stage = {"kind": "quantize", "mode": "static", "backend": "pt2e", "calibration_batches": 2}
    result = compress(source, [stage], data=DATA, evaluate=FAST_EVAL)
    assert result.final["cosine"] > 0.99
    assert result.final["size_bytes"] < 0.3 * result.baseline["size_bytes"]
    rebuilt, _ = from_bytes(to_bytes(result.model, result.lineage))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt(x), result.model(x))


def test_settings_only_fx_applies_are_said_not_applied_when_pt2e_runs_instead() -> None:
    stage = {"kind": "quantize", "mode": "static", "observer": "minmax", "per_channel": False, "compile": False,
             "calibration_batches": 1}  # fmt: skip
    result = compress(Picky(), [stage], data=DATA, evaluate=FAST_EVAL)
    [finding] = [f for f in result.stages[0].notes.findings if "instead (torchao's x86 defaults)" in f]
    assert finding.endswith("; observer: minmax, per_channel: false not applied (the fx backend's alone)")
    with pytest.raises(ValueError, match="bias_correction: true needs backend fx or auto"):
        compress(Picky(), [{"kind": "quantize", "mode": "static", "backend": "pt2e", "bias_correction": True}],
                 data=DATA, evaluate=FAST_EVAL)  # fmt: skip


def test_a_model_no_tracer_can_capture_gets_one_line() -> None:
    with pytest.raises(UserError, match=r"cannot export the model with torch\.export \(strict: .*; non-strict: "):
        compress(ValueDependent(), [{"kind": "quantize", "mode": "static"}], data=DATA, evaluate=FAST_EVAL)
    with pytest.raises(UserError, match="cannot trace the model for static quantization"):
        compress(Picky(), [{"kind": "quantize", "mode": "static", "backend": "fx"}], data=DATA, evaluate=FAST_EVAL)


@pytest.mark.slow  # ~35 s on 2 cores: exporting in train mode and training with fake quantization
def test_qat_through_pt2e_trains_and_rebuilds() -> None:
    stage = {"kind": "quantize", "mode": "qat", "qat": {"epochs": 1, "lr": 0.001, "keep_best": False}}
    result = compress(SOURCE, [stage], data=DATA, evaluate=FAST_EVAL)
    record, deployed = result.lineage.records()
    assert record["kind"] == "quantize_pt2e" and record["qat"] is True and deployed["kind"] == "compile"
    assert result.stages[0].notes.training[0].epochs_run == 1
    assert result.final["cosine"] > 0.9
    rebuilt, _ = from_bytes(to_bytes(result.model, result.lineage), trust=["tests.stages.test_pt2e"])
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt(x), result.model(x))
