"""`--force` replaces only an earlier modelshrink output, never a directory that is or holds an input
(issue #10, items 3 and 5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from modelshrink.cli import app
from tests.conftest import tiny_recipe, write_recipe

runner = CliRunner()


def image_folder(root: Path) -> Path:
    for cls, value in (("cat", 20), ("dog", 230)):
        for i in range(6):
            path = root / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)
    return root


def test_force_never_replaces_the_data_folder(tmp_path: Path) -> None:
    images = image_folder(tmp_path / "imgs")
    data = {"kind": "imagefolder", "path": str(images), "image_size": 8, "channels": 1, "batch_size": 4}
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, data=data))
    result = runner.invoke(app, ["run", str(recipe), "--output", str(images), "--force"])
    assert result.exit_code == 2 and "holds the input data" in result.stderr
    assert len(list(images.rglob("*.png"))) == 12


def test_force_never_replaces_the_folder_holding_the_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    recipe = write_recipe(work / "r.yaml", tiny_recipe(work))
    monkeypatch.chdir(work)
    for output in (str(work), "."):
        result = runner.invoke(app, ["run", "r.yaml", "--output", output, "--force"])
        assert result.exit_code == 2, result.output
        assert recipe.exists()
    result = runner.invoke(app, ["run", str(recipe), "--output", str(tmp_path), "--force"])  # a parent of cwd
    assert result.exit_code == 2 and recipe.exists()


def test_force_replaces_only_what_modelshrink_wrote(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    result = runner.invoke(app, ["run", str(recipe), "--output", str(mine), "--force"])
    assert result.exit_code == 2 and "not written by modelshrink" in result.stderr
    assert (mine / "thesis.txt").read_text() == "years of work"
    assert runner.invoke(app, ["run", str(recipe)]).exit_code == 0
    assert runner.invoke(app, ["run", str(recipe), "--force"]).exit_code == 0, "an earlier output is replaced"


def test_a_dangling_symlink_output_is_refused(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    result = runner.invoke(app, ["run", str(recipe), "--output", str(link)])
    assert result.exit_code == 2 and "symbolic link to nothing" in result.stderr
