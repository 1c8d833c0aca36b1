"""A report.json read back (`compare`, `run --compare-to`) is checked against a schema before any work:
every damaged, hand-edited or hostile file is exit 2 and one line naming its first problem."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from modelshrink.cli import app
from tests.conftest import tiny_recipe, write_recipe

runner = CliRunner()

LATENCY = {"batch1_median": 1.0, "batch1_p95": 1.2, "batchN_median": 4.0, "batchN_p95": 4.4, "batch_n": 4,
           "threads": 2}  # fmt: skip
METRICS = {"accuracy": 0.9, "top5": 1.0, "loss": 0.3, "cosine": 1.0, "agreement": 1.0, "max_abs_error": 0.0,
           "rel_error": 0.0, "custom": {"f1": 0.8}, "latency_ms": LATENCY, "params": 1000, "nonzero_params": 900,
           "sparsity": 0.1, "macs": 5000, "size_bytes": 4096}  # fmt: skip
REPORT = {
    "schema_version": 1,
    "version": "0.1",
    "recipe": {"name": "tiny"},
    "environment": {
        "torch": "2.4",
        "torch_threads": 2,
        "cpu_model": "cpu",
        "cpu_features": ["avx2"],
        "cpu_count": 2,
        "python": "3.11",
    },
    "baseline": copy.deepcopy(METRICS),
    "stages": [],
    "final": METRICS,
    "custom_metrics": {"f1": "higher"},
}


def _edit(report: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy with `a.b.c` set to value (or deleted when value is DELETE)."""
    out = copy.deepcopy(report)
    *parents, last = path.split(".")
    node = out
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return out


DELETE = object()

# (name, the file's bytes, what the error names)
CASES = [
    ("deep nesting", b'{"schema_version": 1, "final": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    (
        "a 5000-digit int",
        json.dumps(_edit(REPORT, "final.params", 10**400)).replace(str(10**400), "9" * 5000).encode(),
        "digits",
    ),
    (
        "1e400",
        json.dumps(REPORT).replace('"loss": 0.3', '"loss": 1e400').encode(),
        "loss: Input should be a finite number",
    ),
    ("a huge int", json.dumps(_edit(REPORT, "final.macs", 10**300)).encode(), "final.macs"),
    ("a string for a number", json.dumps(_edit(REPORT, "final.accuracy", "0.9")).encode(), "final.accuracy"),
    ("final without latency_ms", json.dumps(_edit(REPORT, "final.latency_ms", DELETE)).encode(), "final.latency_ms"),
    ("null latency", json.dumps(_edit(REPORT, "final.latency_ms.batch1_p95", None)).encode(), "batch1_p95"),
    ("a missing metric", json.dumps(_edit(REPORT, "final.cosine", DELETE)).encode(), "final.cosine: required"),
    ("-Infinity", json.dumps(REPORT).replace('"cosine": 1.0', '"cosine": -Infinity').encode(), "-Infinity"),
    ("NaN", json.dumps(REPORT).replace('"cosine": 1.0', '"cosine": NaN').encode(), "NaN"),
    ("non-UTF-8 bytes", json.dumps(REPORT).encode().replace(b'"tiny"', b'"\xff"'), "utf-8"),
    ("a lone surrogate", json.dumps(_edit(REPORT, "recipe.name", "\udcff")).encode(), "recipe.name"),
    ("environment without torch", json.dumps(_edit(REPORT, "environment.torch", DELETE)).encode(), "environment.torch"),
    (
        "cpu_features not strings",
        json.dumps(_edit(REPORT, "environment.cpu_features", [1])).encode(),
        "environment.cpu_features",
    ),
    ("an unknown direction", json.dumps(_edit(REPORT, "custom_metrics", {"f1": "up"})).encode(), "custom_metrics"),
    ("a custom metric unmeasured", json.dumps(_edit(REPORT, "custom_metrics", {"f2": "lower"})).encode(), "'f2'"),
    ("another schema version", json.dumps(_edit(REPORT, "schema_version", 2)).encode(), "schema_version"),
    ("not an object", b"[1, 2]", "the file"),
    ("a huge file", b" " * (50 * 2**20 + 1), "larger than 50 MiB"),
]


@pytest.mark.parametrize(("content", "named"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_compare_refuses_a_bad_report_in_one_line(tmp_path: Path, content: bytes, named: str) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(REPORT))
    bad.write_bytes(content)
    result = runner.invoke(app, ["compare", str(good), str(bad)])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {bad}: not a modelshrink report.json: ") and named in line, line


def test_a_good_report_compares(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(REPORT))
    b.write_text(json.dumps(_edit(REPORT, "final.accuracy", None)))  # null: a NaN report.json wrote
    result = runner.invoke(app, ["compare", str(a), str(b), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"][0][1:] == ["0.9000", "n/a (n/a)"]


def test_run_compare_to_a_bad_report_fails_before_any_work(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, constraints={"max_regression": {"accuracy": 0.1}}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_edit(REPORT, "final.latency_ms.threads", "2")))
    result = runner.invoke(app, ["run", str(recipe), "--compare-to", str(bad)])
    assert result.exit_code == 2 and "final.latency_ms.threads" in result.stderr, result.output
    assert not (tmp_path / "out").exists()
