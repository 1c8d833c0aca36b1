"""Absurd sizes and text that cannot be written are refused when the recipe is read (exit 2, one line
naming the key), not after minutes of work or by exhausting memory; search spaces too large to list
are drawn from without listing them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelshrink.cli import app
from modelshrink.recipe.parse import parse_raw
from modelshrink.recipe.search import check_values, combinations, find_spaces, substitute
from tests.conftest import tiny_recipe, write_recipe

runner = CliRunner()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("evaluate.latency.batch_size=1000000000", "evaluate.latency.batch_size"),
        ("data.image_size=100000", "data.image_size"),
        ("data.batch_size=10000000", "data.batch_size"),
        ("data={kind: synthetic, image_size: 4096, channels: 3, batch_size: 4096}", "GiB per batch"),
        ("stages[0]={kind: finetune, epochs: 1000000000}", "stages[0].epochs"),
        ("stages[0]={kind: prune, method: channel, amount: 0.5, calibration_batches: 10000000}", "calibration_batches"),
        ("name='\udcff'", "name"),
        ("\udcff=1", "key '\\udcff'"),
    ],
)
def test_absurd_sizes_and_lone_surrogates_are_refused_at_parse(tmp_path: Path, override: str, named: str) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    result = runner.invoke(app, ["validate", str(recipe), "--set", override])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert named in line, line


def test_a_lone_surrogate_in_the_file_is_refused_by_run_before_any_work(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, name="\udcff"))  # written as "\udcff"
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 2 and "name: '\\udcff' is not valid unicode text" in result.stderr, result.output
    assert not (tmp_path / "out").exists()


def test_four_spaces_of_1000_values_start_at_once(tmp_path: Path) -> None:
    """10^12 combinations with --max-trials 4: Optuna samples them (nothing is enumerated), each range is
    validated at its ends, and exactly 4 distinct candidates run."""
    amounts = {"search": {"min": 0.0005, "max": 0.9995, "step": 0.001}}
    stages = [{"kind": "prune", "amount": amounts} for _ in range(4)]
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, stages=stages))
    started = time.perf_counter()
    parsed = parse_raw(recipe.read_text())
    spaces = find_spaces(parsed)
    check_values(parsed, spaces)
    assert combinations(spaces) == 1000**4 and time.perf_counter() - started < 10
    out = tmp_path / "search"
    result = runner.invoke(app, ["tune", str(recipe), "-o", str(out), "--max-trials", "4", "--objective", "macs"])
    assert result.exit_code in (0, 1), result.output
    assert "tune: 4 of 1,000,000,000,000 candidates over 4 search spaces" in result.output
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert len(trials) == 4 and len({t["label"] for t in trials}) == 4


class _Counted:
    copies = 0

    def __deepcopy__(self, memo: dict) -> _Counted:
        _Counted.copies += 1
        return self


def test_a_candidate_does_not_copy_the_spaces_values() -> None:
    """Copying every space's values for each candidate made checking n values cost n^2."""
    data = {"stages": [{"kind": "prune", "amount": {"search": [_Counted() for _ in range(1000)]}}]}
    substitute(data, {("stages", 0, "amount"): 0.5})
    assert _Counted.copies == 0
