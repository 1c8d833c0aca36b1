"""`tune --resume` reads trials.json back: a damaged one is exit 2 in one line, and what it says is
trusted only as far as the recipe allows. Its `resolved` values are pasted into tuned.yaml, which is
then run: a trials.json must not be able to make that run load code the recipe never named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from modelshrink.cli import app
from modelshrink.models.zoo import mlp
from tests.conftest import tiny_recipe, write_recipe

runner = CliRunner()


def canary(path: str, **kwargs: Any) -> Any:
    """A teacher factory that leaves a file behind when it runs."""
    Path(path).touch()
    return mlp(**kwargs)


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A recipe with a prune amount searched and a distill stage after it, and its finished search."""
    tmp = tmp_path_factory.mktemp("tuned")
    stages = [{"kind": "prune", "amount": {"search": [0.3, 0.5]}}, {"kind": "distill", "epochs": 1}]
    recipe = write_recipe(tmp / "r.yaml", tiny_recipe(tmp, stages=stages))
    out = tmp / "search"
    result = runner.invoke(app, ["tune", str(recipe), "-o", str(out), "--objective", "macs"])
    assert result.exit_code in (0, 1), result.output
    return recipe, out


def _resume_with(tmp_path: Path, searched: tuple[Path, Path], edit: Any) -> Any:
    recipe, finished = searched
    out = tmp_path / "search"
    shutil.copytree(finished, out)
    shutil.rmtree(out / "best")  # as an interrupted search leaves it
    (out / "tuned.yaml").unlink()
    saved = json.loads((out / "trials.json").read_text())
    edit(saved["trials"])
    (out / "trials.json").write_text(json.dumps(saved))
    return runner.invoke(app, ["tune", str(recipe), "-o", str(out), "--objective", "macs", "--resume"])


def test_resolved_values_cannot_name_code_to_run(tmp_path: Path, searched: tuple[Path, Path]) -> None:
    touched = tmp_path / "canary"
    teacher = {"factory": f"{__name__}:canary", "kwargs": {"path": str(touched), "in_features": 64, "hidden": 32}}

    def hostile(trials: list[dict[str, Any]]) -> None:
        for trial in trials:
            trial["resolved"] = {"1": {"teacher": teacher}}

    result = _resume_with(tmp_path, searched, hostile)
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert "trials.json: not a trials.json of modelshrink tune: trials.0.resolved.1.teacher" in line
    assert not touched.exists(), "the hostile teacher's factory ran"
    assert not (tmp_path / "search" / "best").exists() and not (tmp_path / "search" / "tuned.yaml").exists()


@pytest.mark.parametrize(
    ("resolved", "named"),
    [
        ({"0": {"compile": True}}, "resolved values this recipe refuses"),  # a prune stage compiles nothing
        ({"7": {"compile": True}}, "does not leave at auto"),  # no such stage
        ({"1": {"channels_last": "yes"}}, "resolved values this recipe refuses"),
    ],
)
def test_resolved_keys_must_fit_the_recipes_stages(
    tmp_path: Path, searched: tuple[Path, Path], resolved: dict, named: str
) -> None:
    def edit(trials: list[dict[str, Any]]) -> None:
        trials[0]["resolved"] = resolved

    result = _resume_with(tmp_path, searched, edit)
    assert result.exit_code == 2 and named in result.stderr, result.output
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "edit",
    [
        lambda trials: trials[0].update(label="stages[0].amount=0.9", choice={"stages[0].amount": 0.9}),
        lambda trials: trials[0].update(choice={"stages[0].amount": 0.5}),  # the label says 0.3
        lambda trials: trials[0].update(choice={"stages[0].amount": 0.3, "seed": 1}),
    ],
)
def test_a_trial_must_be_a_candidate_of_this_recipe(tmp_path: Path, searched: tuple[Path, Path], edit: Any) -> None:
    result = _resume_with(tmp_path, searched, edit)
    assert result.exit_code == 2, result.output
    assert "is not a candidate of this recipe's search spaces" in result.stderr


@pytest.mark.parametrize(
    "content", [b"{", b'{"trials": [' * 100_000, b'{"trials": [{"label": 1}]}', b"\xff", b'{"trials": 3}']
)
def test_a_damaged_trials_json_is_one_line(tmp_path: Path, searched: tuple[Path, Path], content: bytes) -> None:
    recipe, finished = searched
    out = tmp_path / "search"
    shutil.copytree(finished, out)
    (out / "trials.json").write_bytes(content)
    result = runner.invoke(app, ["tune", str(recipe), "-o", str(out), "--resume"])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {out / 'trials.json'}: not a trials.json of modelshrink tune: "), line
