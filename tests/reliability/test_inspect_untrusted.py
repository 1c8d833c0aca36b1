"""`inspect` of a checkpoint it may not build (an untrusted factory) still lists every tensor, int8 ones
included, and a PT2E int8 model shows one row per quantized layer, not one row for its graph (issue #24, item 5)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

import modelshrink
from modelshrink.checkpoint import to_bytes

DATA = {"kind": "digits", "image_size": 8, "channels": 1, "batch_size": 32}
MODEL = {"factory": "modelshrink.models.zoo:small_cnn", "kwargs": {"in_channels": 1, "width": 8}}
EVALUATE = {"latency": {"batch_size": 2, "warmup": 0, "iterations": 1}}
LAYERS = ["0", "3", "7", "10", "15"]  # small_cnn's four convolutions and its classifier


def quantized(tmp: Path, stage: dict) -> tuple[Path, Path]:
    """The checkpoint of small_cnn after `stage`, and a copy whose factory nobody trusted."""
    result = modelshrink.compress(MODEL, [stage], data=DATA, evaluate=EVALUATE)
    blob = to_bytes(result.model, result.lineage, (1, 8, 8))
    trusted, untrusted = tmp / "model.pt", tmp / "untrusted.pt"
    trusted.write_bytes(blob)
    payload = torch.load(io.BytesIO(blob), weights_only=True)
    payload["architecture"]["factory"] = "someones_models:small_cnn"
    torch.save(payload, untrusted)
    return trusted, untrusted


@pytest.mark.parametrize("backend", ["fx", "pt2e"])
def test_untrusted_int8_checkpoints_list_every_weight(tmp_path: Path, backend: str) -> None:
    trusted, untrusted = quantized(tmp_path, {"kind": "quantize", "mode": "static", "backend": backend})
    built, unbuilt = modelshrink.inspect(trusted), modelshrink.inspect(untrusted)
    assert unbuilt["untrusted_factory"] == "someones_models:small_cnn"
    assert unbuilt["totals"]["params"] == built["totals"]["params"] > 4000, "no int8 weight left out"
    assert unbuilt["totals"]["params_by_dtype"].get("int8", unbuilt["totals"]["params_by_dtype"].get("qint8")) > 4000
    if backend == "pt2e":  # built: each quantized layer by its path in the model it was exported from
        rows = {row["name"].removeprefix("inner.graph."): row for row in built["layers"]}
        assert list(rows) == LAYERS and all(row["dtype"] == "int8" for row in rows.values())
        assert rows["15"]["type"] == "Linear" and rows["15"]["params"] == 16 * 10 + 10
