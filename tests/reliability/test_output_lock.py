"""Two runs never share an output directory: the second gets exit 2 naming the first's pid; a lock
left by a dead run does not block (issue #10, item 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from modelshrink.cli import app
from tests.conftest import tiny_recipe, write_recipe

runner = CliRunner()


def test_a_second_run_on_a_busy_output_gets_exit_2_and_touches_nothing(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".out.lock").write_text(str(holder.pid))
        resume = tmp_path / ".out.resume"
        resume.mkdir()  # the other run's progress
        result = runner.invoke(app, ["run", str(recipe)])
        assert result.exit_code == 2
        assert f"output.dir: {tmp_path / 'out'} is in use by another run (pid {holder.pid})" in result.stderr
        assert resume.is_dir() and not (tmp_path / "out").exists(), "the other run's state is left alone"
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_dead_run_is_taken_over_and_released(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".out.lock").write_text(str(dead.pid))
    assert runner.invoke(app, ["run", str(recipe)]).exit_code == 0
    assert not (tmp_path / ".out.lock").exists()
    assert os.path.isfile(tmp_path / "out" / "report.json")


def test_an_output_whose_parent_cannot_be_written_gets_exit_2_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("not a directory")
    for out in (tmp_path / "a_file" / "out", Path("/proc/modelshrink-out")):  # /proc refuses new files, even root's
        recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, output={"dir": str(out)}))
        result = runner.invoke(app, ["run", str(recipe)])
        assert result.exit_code == 2, result.output
        assert f"output.dir: cannot write {out}: its parent {out.parent} is not a writable directory" in result.stderr
        assert "baseline" not in result.stderr, "refused before measuring anything"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "r.yaml"]
