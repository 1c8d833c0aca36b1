"""`inspect` totals and per-layer rows against numbers computed by hand."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

import modelshrink
from tests.test_checkpoint import compressed_checkpoint


def test_plain_state_dict_totals_by_hand(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.zero_()  # 12 zeros
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    info = modelshrink.inspect(path)
    params = (4 * 3 + 3) + (3 + 3) + (3 * 2 + 2)  # weights + biases; BN running stats are buffers
    assert info["kind"] == "state_dict"
    assert info["totals"]["params"] == params == 29
    assert info["totals"]["nonzero_params"] == params - 12 - 3  # BN bias starts at zero too
    rows = {row["name"]: row for row in info["layers"]}
    assert rows["0"]["shape"] == [3, 4] and rows["0"]["params"] == 15 and rows["0"]["sparsity"] == 12 / 15
    assert info["file_bytes"] == path.stat().st_size


def test_safetensors_and_quantized_checkpoint(tmp_path: Path) -> None:
    model = nn.Linear(5, 5)
    path = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(path))
    assert modelshrink.inspect(path)["totals"]["params"] == 30

    _, ckpt = compressed_checkpoint(tmp_path / "model.pt")
    info = modelshrink.inspect(ckpt)
    rows = {row["name"]: row for row in info["layers"]}
    assert rows["1"]["dtype"] == "qint8" and rows["5"]["dtype"] == "float32"
    assert info["totals"]["params"] == (16 * 32 + 32) + (32 * 32 + 32) + (32 * 4 + 4)
    assert info["macs"] == 16 * 32 + 32 * 32 + 32 * 4
    assert info["transforms"] == ["quantize_dynamic"]
