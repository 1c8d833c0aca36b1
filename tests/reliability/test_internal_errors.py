"""A bug of ours exits 3 with one line and leaves nothing behind; exit 1 keeps meaning "a gate failed"
(issue #10, item 3)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelshrink import recipe_run
from modelshrink.cli import app
from tests.conftest import tiny_recipe, write_recipe

runner = CliRunner()


def test_an_internal_error_exits_3_with_one_line_and_no_partial_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(recipe_run, "add_latencies", broken)
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 3
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: internal error, please report it: ZeroDivisionError: a bug (--debug shows the traceback)"]
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"], "no output, no .resume, no staging dir"
    debug = runner.invoke(app, ["--debug", "run", str(recipe)])
    assert debug.exit_code == 3 and "Traceback" in debug.stderr
