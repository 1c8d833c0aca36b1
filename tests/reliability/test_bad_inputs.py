"""Bad inputs that used to escape as tracebacks or silently wrong runs (issue #10, items 3 and 8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modelshrink.data import build_data
from modelshrink.errors import UserError
from modelshrink.loading import load_model
from modelshrink.recipe.schema import ImageFolderData, ModelSpec
from tests.recipe.test_errors import VALID, errors_of


def test_constructor_failures_from_bad_kwargs_are_user_errors() -> None:
    with pytest.raises(UserError, match=r"model.torchvision: resnet18\(num_classes=-5\) failed: .*negative"):
        load_model(ModelSpec(torchvision="resnet18", num_classes=None, kwargs={"num_classes": -5}))
    with pytest.raises(UserError, match=r"model.factory: modelshrink.models.zoo:small_cnn\(\*\*kwargs\) failed"):
        load_model(ModelSpec(factory="modelshrink.models.zoo:small_cnn", kwargs={"width": -3}))


@pytest.mark.parametrize("name", ["..", ".", "", "a\\b"])
def test_checkpoint_name_must_be_a_plain_file_name(name: str) -> None:
    assert "checkpoint_name must be a plain file name" in errors_of(VALID + f"  checkpoint_name: {name!r}\n")


def test_a_labeled_image_folder_needs_two_classes(tmp_path: Path) -> None:
    for i in range(4):
        path = tmp_path / "only" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 10 * i, dtype=np.uint8)).save(path)
    with pytest.raises(UserError, match=r"1 class folder.*at least 2"):
        build_data(ImageFolderData(kind="imagefolder", path=tmp_path, image_size=8), 0)


def test_a_corrupt_image_is_named_with_exit_2_and_nothing_left(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from modelshrink.cli import app
    from tests.conftest import tiny_recipe, write_recipe

    for cls, value in (("cat", 20), ("dog", 230)):
        for i in range(6):
            path = tmp_path / "imgs" / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)
    (tmp_path / "imgs" / "dog" / "5.png").write_bytes(b"not an image")
    data = {"kind": "imagefolder", "path": str(tmp_path / "imgs"), "image_size": 8, "channels": 1, "batch_size": 4}
    model = {"factory": "modelshrink.models.zoo:mlp", "kwargs": {"in_features": 64, "hidden": 8, "num_classes": 2}}
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, data=data, model=model))
    result = CliRunner().invoke(app, ["run", str(recipe)])
    assert result.exit_code == 2 and "cannot read image" in result.stderr and "5.png" in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "r.yaml"]


def test_unknown_key_suggests_from_its_own_section() -> None:
    text = VALID.replace("  dir: runs/x\n", "  dir: runs/x\n  path: y\n")
    assert "output.path: unknown key 'path' (keys here: checkpoint_name, dir, html)" in errors_of(text)
    assert "did you mean 'checkpoint'" in errors_of(VALID.replace("  num_classes: 10\n", "  checkpont: x\n"))


def test_only_rank_0_of_a_multi_process_run_prints_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from modelshrink.cli import app

    recipe = tmp_path / "bad.yaml"
    recipe.write_text(VALID + "  nonsense: 1\n")
    monkeypatch.setenv("RANK", "1")
    other = CliRunner().invoke(app, ["run", str(recipe)])
    assert other.exit_code == 2 and other.stderr == ""
    monkeypatch.setenv("RANK", "0")
    first = CliRunner().invoke(app, ["run", str(recipe)])
    assert first.exit_code == 2 and first.stderr.count("error:") == 1


def test_a_bad_jsonl_line_is_named_by_its_line_number(tmp_path: Path) -> None:
    from modelshrink.data.text import read_texts
    from modelshrink.recipe.schema import TextData

    path = tmp_path / "texts.jsonl"
    path.write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": 2\n')
    with pytest.raises(UserError, match=r"texts.jsonl:3: not valid JSON"):
        read_texts(TextData(kind="text", path=path, label_field="label"))
    path.write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": 2}\n{"text": "c"}\n')
    with pytest.raises(UserError, match=r"texts.jsonl:4: the record has no 'label'"):
        read_texts(TextData(kind="text", path=path, label_field="label"))


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"model": {"checkpoint": "missing.pt"}}, "model.checkpoint: missing.pt does not exist"),
        ({"model": {"checkpoint": "."}}, "model.checkpoint: . is a directory, not a file"),
        ({"data": {"kind": "imagefolder", "path": "no_images"}}, "data.path: no_images does not exist"),
        ({"data": {"kind": "cifar10", "path": "r.yaml"}}, "data.path: r.yaml is a file, not a directory"),
        ({"data": {"kind": "text", "path": "t.jsonl", "tokenizer": "x"}}, "data.path: t.jsonl does not exist"),
        (
            {"stages": [{"kind": "distill", "teacher": {"checkpoint": "teacher.pt"}}]},
            "stages[0].teacher.checkpoint: teacher.pt does not exist",
        ),
    ],
)
def test_validate_refuses_missing_inputs_as_run_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: dict, message: str
) -> None:
    from typer.testing import CliRunner

    from modelshrink.cli import app
    from tests.conftest import tiny_recipe, write_recipe

    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, **section))
    for command in ("validate", "run"):
        result = CliRunner().invoke(app, [command, str(recipe)])
        assert result.exit_code == 2 and message in result.stderr, (command, result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]
