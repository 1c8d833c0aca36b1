"""The user's own metrics: in report.json, report.md and the CLI table, gated by name, and every
mistake in them one line with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelshrink.cli import app
from tests.conftest import FAST_EVAL, tiny_recipe, write_recipe

runner = CliRunner()


def run(tmp_path: Path, metrics: list, constraints: dict | None = None) -> tuple[int, str, str]:
    recipe = tiny_recipe(tmp_path, evaluate={**FAST_EVAL, "metrics": metrics}, constraints=constraints or {})
    result = runner.invoke(app, ["run", str(write_recipe(tmp_path / "r.yaml", recipe)), "--force"])
    return result.exit_code, result.stdout, result.stderr


def test_a_custom_metric_is_reported_and_gated(tmp_path: Path) -> None:
    code, stdout, stderr = run(tmp_path, ["tests.data.own:first_logit"], {"first_logit": {"min": -1e9}})
    assert code == 0, stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert isinstance(report["final"]["custom"]["first_logit"], float)
    assert report["final"]["custom"]["undefined"] is None, "a metric returned as None is null, never 0"
    assert report["custom_metrics"] == {"first_logit": "higher", "undefined": "higher"}
    assert report["constraints"] == [
        {"name": "first_logit.min", "limit": -1e9, "value": report["final"]["custom"]["first_logit"], "passed": True}
    ]
    assert "first_logit" in stdout and "first_logit.min: limit" in stdout
    assert "first_logit" in (tmp_path / "out" / "report.md").read_text()

    code, _, stderr = run(tmp_path, ["tests.data.own:first_logit"], {"first_logit": {"min": 1e9}})
    assert code == 1 and "constraint failed: first_logit.min" in stderr
    assert (tmp_path / "out" / "report.json").exists(), "a failed gate still writes its reports"


@pytest.mark.parametrize(
    ("metrics", "constraints", "message"),
    [
        (["tests.data.own:first_logit"], {"map50": {"min": 0.5}}, "constraints.map50: no metric of that name"),
        (["tests.data.own:not_a_dict"], {}, "returned list, not a {name: value} dict"),
        (["tests.data.own:raises"], {}, "tests.data.own:raises failed: KeyError: 'boxes'"),
        (["tests.data.own:missing"], {}, "has no callable 'missing'"),
        (["no_colon"], {}, "must look like 'package.module:function'"),
        ([], {"map50": {"min": 0.5}}, "unknown key 'map50': no such metric"),
        (["tests.data.own:first_logit"], {"map50": 0.5}, "unknown key 'map50'"),
        (["tests.data.own:first_logit"], {"map50": {"mn": 0.5}}, "constraints.map50.mn: unknown key"),
    ],
)
def test_custom_metric_mistakes(tmp_path: Path, metrics: list, constraints: dict, message: str) -> None:
    code, _, stderr = run(tmp_path, metrics, constraints)
    assert code == 2 and message in stderr, stderr
    assert stderr.count("error:") == 1 and not (tmp_path / "out").exists()


def test_a_custom_metric_gates_regressions_against_last_nights_report(tmp_path: Path) -> None:
    metrics = ["tests.data.own:first_logit"]
    assert run(tmp_path, metrics)[0] == 0
    previous = tmp_path / "previous.json"
    previous.write_text((tmp_path / "out" / "report.json").read_text())
    gates = {"compare_to": str(previous), "max_regression": {"first_logit": 0.0}}
    code, stdout, stderr = run(tmp_path, metrics, gates)
    assert code == 0, stderr  # the same seed: the same value, no regression
    assert "regression.first_logit: limit 0.0000, value 0.0000 → pass" in stdout

    code, _, stderr = run(tmp_path, metrics, {**gates, "max_regression": {"mean_iou": 0.0}})
    assert code == 2 and "the earlier report has no metric 'mean_iou'" in stderr
    code, _, stderr = run(tmp_path, [], {**gates, "max_regression": {"mean_iou": 0.0}})
    assert code == 2 and "max_regression: unknown metric 'mean_iou'" in stderr
