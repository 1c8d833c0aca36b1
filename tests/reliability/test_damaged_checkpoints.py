"""Damaged or foreign modelshrink checkpoints get one line and exit 2, never a traceback (issue #10, item 3)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from modelshrink.cli import app

GOOD = {
    "format": "modelshrink",
    "format_version": 1,
    "architecture": {"factory": "modelshrink.models.zoo:mlp", "kwargs": {"in_features": 4, "hidden": 4}},
    "transforms": [],
    "state_dict": {},
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architecture": None}, "no architecture record"),
        ({"state_dict": None}, "no state_dict"),
        ({"transforms": "reshape"}, "transforms must be a list"),
        ({"transforms": [1, 2]}, "transforms must be a list"),
        ({"format_version": "1"}, "format_version '1' is not an integer"),
        ({"format_version": 99}, "newer than this modelshrink reads"),
    ],
)
def test_damaged_checkpoint_gets_one_line_and_exit_2(tmp_path: Path, change: dict, message: str) -> None:
    payload = {**GOOD, **change}
    payload = {k: v for k, v in payload.items() if v is not None}
    path = tmp_path / "ck.pt"
    torch.save(payload, path)
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
