"""Nightly CI: gates against last night's report, `compare` with noise-aware latency, JUnit XML for CI
systems, pictures beside report.md (or text charts), and a self-contained report.html."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from modelshrink import plots
from modelshrink.cli import app
from modelshrink.descriptors import human_bytes
from tests.conftest import tiny_recipe, write_recipe

runner = CliRunner()


@pytest.fixture(scope="module")
def last_night(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A real report.json of a tiny run, which each test copies and edits."""
    tmp = tmp_path_factory.mktemp("night")
    recipe = write_recipe(tmp / "r.yaml", tiny_recipe(tmp))
    assert runner.invoke(app, ["run", str(recipe)]).exit_code == 0
    return json.loads((tmp / "out" / "report.json").read_text())


def save(report: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report))
    return path


def test_compare_passes_unchanged_runs_and_fails_a_regression(tmp_path: Path, last_night: dict) -> None:
    a = save(last_night, tmp_path / "mon" / "report.json")
    b = save(last_night, tmp_path / "tue" / "report.json")
    worse = copy.deepcopy(last_night)
    worse["final"]["accuracy"] -= 0.05
    worse["final"]["size_bytes"] *= 2
    c = save(worse, tmp_path / "wed" / "report.json")
    limits = ["--max-accuracy-drop", "0.01", "--max-size-ratio", "1.5", "--max-latency-ratio", "1.0"]
    same = runner.invoke(app, ["compare", str(a), str(b), *limits])
    assert same.exit_code == 0, same.output
    assert "regression.size_bytes: limit 1.50x, value 1.00x → pass" in same.stdout
    result = runner.invoke(app, ["compare", str(a), str(b), str(c), *limits, "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["labels"] == ["mon", "tue", "wed"] and not data["passed"]
    assert {g["name"]: g["passed"] for g in data["regressions"]} == {
        "regression.accuracy": False,
        "regression.latency_b1_ms": True,  # the same timings
        "regression.latency_bn_ms": True,
        "regression.size_bytes": False,
    }
    assert "error: regression: regression.accuracy (limit 0.0100, got 0.0500)" in result.stderr
    markdown = runner.invoke(app, ["compare", str(a), str(c), "--markdown"]).stdout
    size = last_night["final"]["size_bytes"]
    assert f"| size | {human_bytes(size)} | {human_bytes(2 * size)} (2.00x) |" in markdown
    older = copy.deepcopy(last_night)
    del older["final"]["agreement"]  # written before agreement was measured
    old = save(older, tmp_path / "sun" / "report.json")
    table = runner.invoke(app, ["compare", str(old), str(a), "--markdown"]).stdout
    [row] = [line for line in table.splitlines() if line.startswith("| agreement |")]
    assert row.startswith("| agreement | n/a | ") and row.endswith(" (n/a) |"), row


def test_latency_within_the_noise_band_is_not_a_regression(tmp_path: Path, last_night: dict) -> None:
    base = copy.deepcopy(last_night)
    base["final"]["latency_ms"].update(batch1_median=10.0, batch1_p95=12.0)
    noisy, slower = copy.deepcopy(base), copy.deepcopy(base)
    noisy["final"]["latency_ms"].update(batch1_median=11.5, batch1_p95=13.0)  # within each other's band
    slower["final"]["latency_ms"].update(batch1_median=14.0, batch1_p95=15.0)  # beyond last night's p95
    a, b, c = (save(r, tmp_path / n / "report.json") for r, n in ((base, "a"), (noisy, "b"), (slower, "c")))
    assert runner.invoke(app, ["compare", str(a), str(b), "--max-latency-ratio", "1.0"]).exit_code == 0
    result = runner.invoke(app, ["compare", str(a), str(c), "--max-latency-ratio", "1.2", "--json"])
    assert result.exit_code == 1
    [gate] = [g for g in json.loads(result.stdout)["regressions"] if g["name"] == "regression.latency_b1_ms"]
    assert gate["value"] == pytest.approx(1.4) and not gate["passed"]


def test_compare_warns_when_reports_come_from_different_machines(tmp_path: Path, last_night: dict) -> None:
    other = copy.deepcopy(last_night)
    other["environment"]["cpu_model"] = "Some Other CPU"
    other["final"]["latency_ms"]["threads"] = 16
    result = runner.invoke(app, ["compare", str(save(last_night, tmp_path / "a" / "report.json")),
                                 str(save(other, tmp_path / "b" / "report.json"))])  # fmt: skip
    assert result.exit_code == 0
    assert "warning: b ran on another machine (Some Other CPU" in result.stderr
    assert "warning: b was timed with 16 threads" in result.stderr
    bad = tmp_path / "junk.json"
    bad.write_text("{}")
    result = runner.invoke(app, ["compare", str(bad), str(bad)])
    assert result.exit_code == 2 and "not a modelshrink report.json" in result.stderr


def test_run_gates_against_last_night_and_writes_junit(tmp_path: Path, last_night: dict) -> None:
    better = copy.deepcopy(last_night)
    better["final"]["accuracy"] = 0.99  # last night's model was far better
    previous = save(better, tmp_path / "prev" / "report.json")
    gates = {"max_regression": {"accuracy": 0.01, "size_bytes": 1.1}, "min_cosine": 0.0}
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, constraints=gates))
    junit = tmp_path / "gates.xml"
    result = runner.invoke(app, ["run", str(recipe), "--compare-to", str(previous), "--junit", str(junit)])
    assert result.exit_code == 1, result.output
    assert "regression.accuracy: limit 0.0100" in result.stdout and "FAIL" in result.stdout
    assert "earlier" in result.stdout and "0.9900" in result.stdout, "the comparison table is shown"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["compared_to"]["path"] == str(previous)
    assert f"## Against {previous}" in (tmp_path / "out" / "report.md").read_text()

    suites = ET.parse(junit).getroot()
    assert suites.tag == "testsuites" and suites.get("tests") == "3" and suites.get("failures") == "1"
    [suite] = suites.findall("testsuite")
    cases = {case.get("name"): case for case in suite.findall("testcase")}
    assert set(cases) == {"min_cosine", "regression.accuracy", "regression.size_bytes"}
    assert cases["regression.accuracy"].find("failure") is not None
    assert cases["min_cosine"].find("failure") is None and cases["min_cosine"].get("classname")

    missing = runner.invoke(app, ["run", str(recipe), "-o", str(tmp_path / "o2"), "--compare-to", "nope.json"])
    assert missing.exit_code == 2 and "nope.json: no such report" in missing.stderr
    alone = write_recipe(tmp_path / "alone.yaml", tiny_recipe(tmp_path, constraints={"compare_to": str(previous)}))
    assert "compare_to and max_regression go together" in runner.invoke(app, ["validate", str(alone)]).stderr
    without = runner.invoke(app, ["run", str(recipe), "-o", str(tmp_path / "o3")])  # max_regression, no report
    assert without.exit_code == 2 and "no report to compare with" in without.stderr and not (tmp_path / "o3").exists()


def test_pictures_are_png_files_and_report_html_holds_them(tmp_path: Path) -> None:
    recipe = write_recipe(
        tmp_path / "r.yaml", tiny_recipe(tmp_path, output={"dir": str(tmp_path / "out"), "html": True})
    )
    assert runner.invoke(app, ["run", str(recipe)]).exit_code == 0
    out = tmp_path / "out"
    for name in ("quality_latency.png", "layers.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(out / name) as image:
            image.verify()
        assert f"]({name})" in (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and 'src="layers.png"' not in html
    assert "<table>" in html and "prune1" in html


def test_without_matplotlib_report_md_draws_text_charts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plots, "available", lambda: False)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    assert runner.invoke(app, ["run", str(recipe)]).exit_code == 0
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## Sparsity per layer" in markdown and "█" in markdown and "(32-bit, " in markdown
    assert not list((tmp_path / "out").glob("*.png"))
