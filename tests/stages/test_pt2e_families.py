"""Static int8 through torch.export + PT2E on the model families users bring: each is quantized,
saved, and rebuilt in a fresh process with the same outputs (issue #12, item 1). Random weights:
what is tested is capture, conversion and the rebuild, not accuracy.

One model per family of operations, each 40-140 s on 2 cores: residual convolutions (torchvision
resnet18); depthwise convolutions with squeeze-excitation and hardswish from a third-party factory
(timm mobilenetv3_large_100); LayerNorm, GELU and 7x7 depthwise convolutions (timm convnext_tiny).
torchvision resnet50, mobilenet_v3_large, efficientnet_b0 and regnet_y_400mf, and timm
tf_efficientnet_lite0 and resnet50 passed the same test (issue #12) and repeat those operations."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modelshrink.checkpoint import to_bytes
from modelshrink.engine import compress
from tests.conftest import FAST_EVAL
from tests.stages.test_pt2e import RELOAD

pytest.importorskip("torchao")
timm = pytest.importorskip("timm")
REPO = Path(__file__).resolve().parents[2]
DATA = {"kind": "synthetic", "channels": 3, "image_size": 32, "num_samples": 32, "batch_size": 16}
SOURCES = {
    "resnet18": {"torchvision": "resnet18", "num_classes": 10},
    **{f"timm {name}": {"factory": "timm:create_model", "kwargs": {"model_name": name, "num_classes": 10}}
       for name in ("mobilenetv3_large_100", "convnext_tiny")},
}  # fmt: skip


@pytest.mark.slow  # 40-140 s each on 2 cores
@pytest.mark.parametrize("family", list(SOURCES))
def test_pt2e_static_int8_rebuilds_in_a_fresh_process(family: str, tmp_path: Path) -> None:
    stage = {"kind": "quantize", "mode": "static", "backend": "pt2e", "calibration_batches": 1}
    result = compress(SOURCES[family], [stage], data=DATA, evaluate=FAST_EVAL)
    assert [t.kind for t in result.lineage.transforms] == ["quantize_pt2e", "compile"]
    assert result.final["size_bytes"] < 0.5 * result.baseline["size_bytes"]
    (tmp_path / "model.pt").write_bytes(to_bytes(result.model, result.lineage, (3, 32, 32)))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    args = [str(tmp_path / "model.pt"), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")]
    subprocess.run([sys.executable, "-c", RELOAD, *args], check=True, cwd=REPO)
    eager, deployed, compiles = torch.load(tmp_path / "y.pt")
    assert torch.equal(eager, result.model(x)) and compiles >= 1
    with torch.inference_mode():
        torch.testing.assert_close(deployed, result.model(x), rtol=1e-4, atol=1e-4)
