"""One trust policy for every loader and command (issue #24, item 1): a file names only torchvision models,
zoo entries by exact name, Hugging Face configs or factories the user trusted; no modelshrink function
that resolves a target is reachable from a file, even with `--trust modelshrink`; and a name read from a
file is never imported from the current directory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import modelshrink
from modelshrink.cli import app
from modelshrink.errors import UserError
from modelshrink.trust import is_trusted
from tests.conftest import tiny_recipe, write_recipe
from tests.reliability.test_hostile_corpus import good_checkpoint

runner = CliRunner()


def save(tmp: Path, architecture: dict) -> Path:
    path = tmp / "ck.pt"
    torch.save(good_checkpoint(architecture=architecture), path)
    return path


def test_only_zoo_entries_of_ours_are_trusted_whatever_the_user_trusts() -> None:
    assert is_trusted("modelshrink.models.zoo:mlp", [])
    for target in ("modelshrink.models.factory:build", "modelshrink.user_code:resolve", "modelshrink:load",
                   "modelshrink.models.zoo:nn"):  # fmt: skip
        assert not is_trusted(target, ["modelshrink", "modelshrink.models", target])
    assert is_trusted("mypkg.nets:resnet", ["mypkg"]) and not is_trusted("mypkgx.nets:resnet", ["mypkg"])


@pytest.mark.parametrize(
    "architecture",
    [
        # our own factory builder, handed os:system: it would resolve and call it
        {"factory": "modelshrink.models.factory:build", "kwargs": {"target": "os:system"}},
        {"factory": "modelshrink.user_code:run_user_code", "kwargs": {"target": "os:system"}},
        # a zoo model whose kwargs are not plain values
        {"factory": "modelshrink.models.zoo:mlp", "kwargs": {"hidden": {"factory": "os:system"}}},
        {"factory": "modelshrink.models.zoo:mlp", "torchvision": "resnet18"},
        {"factory": 42},
        # a plug-in source in one of our modules, in a module named with a path, or with nested fields
        {"source": {"kind": "build"}, "module": "modelshrink.models.factory"},
        {"source": {"kind": "mlp"}, "module": "../evil"},
        {"source": {"kind": "mlp", "hidden": {"factory": "os:system"}}, "module": "modelshrink.models.zoo"},
    ],
    ids=[
        "factory-builder",
        "run-user-code",
        "nested-kwargs",
        "two-kinds",
        "not-a-name",
        "plugin-of-ours",
        "plugin-path",
        "plugin-nested",
    ],
)
def test_a_checkpoint_cannot_reach_our_own_resolvers(tmp_path: Path, architecture: dict, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = save(tmp_path, architecture)
    with pytest.raises(UserError, match=r"ck\.pt"):
        modelshrink.load(path, trust=["modelshrink"])
    result = runner.invoke(app, ["export", "ck.pt", "--trust", "modelshrink"])
    assert result.exit_code == 2 and result.stderr.count("error:") == 1, result.output
    write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, model={"checkpoint": "ck.pt"}))
    result = runner.invoke(app, ["run", "r.yaml", "--trust", "modelshrink"])
    assert result.exit_code == 2 and "ck.pt" in result.stderr, result.output
    assert not (tmp_path / "out").exists()


def test_inspect_shows_an_untrusted_record_without_building_it(tmp_path: Path) -> None:
    path = save(tmp_path, {"factory": "modelshrink.models.factory:build", "kwargs": {"target": "os:system"}})
    info = modelshrink.inspect(path, trust=["modelshrink"])
    assert info["untrusted_factory"] == "modelshrink.models.factory:build"
    assert info["totals"]["params"] > 0, "the layers still come from the state_dict"


def test_a_name_read_from_a_file_is_never_imported_from_the_current_directory(tmp_path: Path, monkeypatch) -> None:
    """A module planted beside a downloaded checkpoint cannot stand in for the one the user trusted."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "planted_models.py").write_text(
        "import pathlib\npathlib.Path('canary').touch()\nfrom modelshrink.models.zoo import mlp as make\n"
    )
    save(tmp_path, {"factory": "planted_models:make", "kwargs": {"in_features": 64, "hidden": 8}})
    before = list(sys.path)
    result = runner.invoke(app, ["inspect", "ck.pt", "--trust", "planted_models"])
    assert result.exit_code == 2 and "never imported from the current directory" in result.stderr, result.output
    assert not (tmp_path / "canary").exists() and "planted_models" not in sys.modules
    assert sys.path == before


def test_a_recipes_own_factory_may_live_in_the_current_directory_and_leaves_no_trace(
    tmp_path: Path, monkeypatch
) -> None:
    """The recipe is the user's script: its factory is found beside it, and the path is as it was after."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "own_models.py").write_text("from modelshrink.models.zoo import mlp as make\n")
    model = {"factory": "own_models:make", "kwargs": {"in_features": 64, "hidden": 8}}
    write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, model=model, stages=[]))
    before = list(sys.path)
    try:
        result = runner.invoke(app, ["run", "r.yaml"])
        assert result.exit_code == 0, result.output
        assert sys.path == before, "the current directory was on sys.path only while the recipe's module loaded"
        assert isinstance(modelshrink.load(tmp_path / "out" / "model.pt", trust=["own_models"]), torch.nn.Module)
    finally:
        sys.modules.pop("own_models", None)
