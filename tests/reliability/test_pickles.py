"""A pickle that would run code on loading is named for what it is, and junk bytes get one line
(issue #10, item 8)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from typer.testing import CliRunner

from modelshrink.cli import app

runner = CliRunner()


class Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("true",))


def test_a_code_running_pickle_is_named_and_refused(tmp_path: Path) -> None:
    torch.save({"weights": Evil()}, tmp_path / "evil.pt")
    result = runner.invoke(app, ["inspect", str(tmp_path / "evil.pt")])
    assert result.exit_code == 2
    assert "would import and call posix.system while loading" in result.stderr or "nt.system" in result.stderr
    assert "--allow-pickle" in result.stderr


def test_a_pickled_module_points_at_the_cli_flag_and_loads_with_it(tmp_path: Path) -> None:
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")
    result = runner.invoke(app, ["inspect", str(tmp_path / "module.pt")])
    assert result.exit_code == 2 and "torch.nn.modules.linear.Linear" in result.stderr
    assert "--allow-pickle" in result.stderr
    assert runner.invoke(app, ["inspect", str(tmp_path / "module.pt"), "--allow-pickle"]).exit_code == 0


def test_junk_bytes_get_one_line(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"\x80\x04junkjunk")
    result = runner.invoke(app, ["inspect", str(tmp_path / "junk.pt")])
    assert result.exit_code == 2 and "not a PyTorch checkpoint" in result.stderr and "Traceback" not in result.output
