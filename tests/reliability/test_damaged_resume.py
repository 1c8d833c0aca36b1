"""A damaged resume state stops `--resume` with one line and exit 2, and is removed (issue #10, item 3)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import modelshrink
from modelshrink import resume as resume_module
from modelshrink.cli import app
from tests.conftest import tiny_recipe, write_recipe

STAGES = [
    {"kind": "prune", "name": "a", "amount": 0.3},
    {"kind": "finetune", "name": "b", "epochs": 2, "lr": 0.005},
]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated state": lambda d: _truncate(d / "state.pt"),
    "garbage state": lambda d: (d / "state.pt").write_bytes(b"\x00garbage" * 10),
    "state of other fields": lambda d: torch.save({"recipe": 1, "completed": "x"}, d / "state.pt"),
    "truncated model": lambda d: _truncate(d / "model_1.pt"),
    "missing baseline": lambda d: (d / "model_0.pt").unlink(),
    "garbage epoch": lambda d: (d / "epoch.pt").write_bytes(b"PK\x03\x04 not a zip"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_resume_state_gets_one_line_exit_2_and_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, stages=STAGES))
    save_epoch = resume_module.ResumeStore.save_epoch

    def interrupted(self, stage, state):  # killed after the first epoch of stage b was saved
        save_epoch(self, stage, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(resume_module.ResumeStore, "save_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        modelshrink.run_recipe(recipe)
    monkeypatch.undo()
    state = tmp_path / ".out.resume"
    DAMAGE[damage](state)

    result = CliRunner().invoke(app, ["run", str(recipe), "--resume"])
    assert result.exit_code == 2, result.output
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert f"--resume: the saved state {state}/" in line and "is damaged" in line and len(line) < 400, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"], "no output, no state, no lock left"
