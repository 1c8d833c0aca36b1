"""`tune --resume` reads the study back from its storage (study.journal): a damaged one is exit 2 in one
line, and what its records say is trusted only as far as the recipe allows. Their `resolved` values are
pasted into tuned.yaml, which is then run: a storage must not be able to make that run load code the
recipe never named."""

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


def _edit_journal(journal: Path, edit: Any) -> None:
    """`edit(ops)` changes the journal's operations (Optuna's JSON lines) in place."""
    ops = [json.loads(line) for line in journal.read_text().splitlines()]
    edit(ops)
    journal.write_text("".join(json.dumps(op) + "\n" for op in ops))


def _records(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [op["user_attr"]["record"] for op in ops if "record" in op.get("user_attr", {})]


def _resume_with(tmp_path: Path, searched: tuple[Path, Path], edit: Any) -> Any:
    """The finished search as an interrupted one leaves it (no best/, no tuned.yaml), its records edited."""
    recipe, finished = searched
    out = tmp_path / "search"
    shutil.copytree(finished, out)
    shutil.rmtree(out / "best")
    (out / "tuned.yaml").unlink()
    _edit_journal(out / "study.journal", lambda ops: edit(_records(ops)))
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
    assert "trial 0: not a record of modelshrink tune: resolved.1.teacher" in line
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


def _param_ops(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [op for op in ops if "param_name" in op]


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda ops: _records(ops)[0].update(label="stages[0].amount=0.9"), "names another candidate"),
        (lambda ops: _records(ops)[0].update(choice={"stages[0].amount": 0.3, "seed": 1}), "names another candidate"),
        (lambda ops: _param_ops(ops)[0].update(param_value_internal=7), "as an Optuna storage"),
        (lambda ops: _param_ops(ops)[0].update(
            distribution=json.dumps({"name": "CategoricalDistribution", "attributes": {"choices": [0.3, 0.9]}})),
         "is not a candidate of this recipe's search spaces"),
        (lambda ops: _param_ops(ops)[0].update(param_name="seed"), "is not a candidate of this recipe's search spaces"),
    ],
)
def test_a_trial_must_be_a_candidate_of_this_recipe(
    tmp_path: Path, searched: tuple[Path, Path], edit: Any, named: str
) -> None:
    recipe, finished = searched
    out = tmp_path / "search"
    shutil.copytree(finished, out)
    shutil.rmtree(out / "best")
    _edit_journal(out / "study.journal", edit)
    result = runner.invoke(app, ["tune", str(recipe), "-o", str(out), "--objective", "macs", "--resume"])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert named in line, line
    assert not (out / "best").exists()


@pytest.mark.parametrize(
    "content", [b"{", b'{"op_code": 0}\n', b"[" * 100_000 + b"\n", b"\xff\n", b'{"op_code": 5, "trial_id": 3}\n', b""]
)
def test_a_damaged_study_journal_is_one_line(tmp_path: Path, searched: tuple[Path, Path], content: bytes) -> None:
    recipe, finished = searched
    out = tmp_path / "search"
    shutil.copytree(finished, out)
    shutil.rmtree(out / "best")
    (out / "study.journal").write_bytes(content)
    result = runner.invoke(app, ["tune", str(recipe), "-o", str(out), "--objective", "macs", "--resume"])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: "), line
    assert not (out / "best").exists()


def test_a_journal_cut_off_mid_record_is_refused_and_left_as_it_was(tmp_path: Path, searched: tuple[Path, Path]
                                                                    ) -> None:  # fmt: skip
    """Optuna's reader skips a last line a crash cut off, and the next record would be appended to it."""
    recipe, finished = searched
    out = tmp_path / "search"
    shutil.copytree(finished, out)
    shutil.rmtree(out / "best")
    cut = (finished / "study.journal").read_bytes()[:-40]
    (out / "study.journal").write_bytes(cut)
    result = runner.invoke(app, ["tune", str(recipe), "-o", str(out), "--objective", "macs", "--resume"])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert "the last record of" in line and "is cut off" in line, line
    assert (out / "study.journal").read_bytes() == cut


def test_a_records_measures_must_be_numbers(tmp_path: Path, searched: tuple[Path, Path]) -> None:
    def edit(trials: list[dict[str, Any]]) -> None:
        trials[0]["metrics"]["accuracy"] = "high"

    result = _resume_with(tmp_path, searched, edit)
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert "metrics.accuracy: not a number, null or a group of numbers" in line, line


def test_a_finished_trial_without_its_record_is_refused(tmp_path: Path, searched: tuple[Path, Path]) -> None:
    """A record removed by hand would make its candidate vanish from trials.json and tune.md."""
    recipe, finished = searched
    out = tmp_path / "search"
    shutil.copytree(finished, out)
    shutil.rmtree(out / "best")
    _edit_journal(out / "study.journal", lambda ops: ops.remove(next(op for op in ops if "record" in op.get(
        "user_attr", {}))))  # fmt: skip
    result = runner.invoke(app, ["tune", str(recipe), "-o", str(out), "--objective", "macs", "--resume"])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert "finished without a record of modelshrink tune" in line, line
