"""Gates are bounds on the metrics the report knows, driven by the metric descriptors: the named
gates and the generic form (`latency_b1_ms: {max_ratio: 0.8}`) check alike, and NaN never passes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelshrink import descriptors
from modelshrink.cli import app
from modelshrink.constraints import check_constraints
from modelshrink.errors import UserError
from modelshrink.recipe import parse_recipe
from modelshrink.report import to_markdown
from tests.recipe.test_errors import VALID, errors_of


def metrics(accuracy: float, size: int, b1: float) -> descriptors.Metrics:
    latency = {"batch1_median": b1, "batch1_p95": b1, "batchN_median": b1, "batchN_p95": b1, "batch_n": 4, "threads": 1}
    return {"accuracy": accuracy, "loss": 0.1, "cosine": 1.0, "latency_ms": latency, "params": 10,  # type: ignore[typeddict-item]
            "nonzero_params": 10, "sparsity": 0.0, "macs": 10, "size_bytes": size}  # fmt: skip


def constraints(text: str):
    return parse_recipe(VALID + "constraints:\n" + text).constraints


def test_named_and_generic_gates_check_alike() -> None:
    base, final = metrics(0.95, 4000, 2.0), metrics(0.93, 1000, 1.5)
    named = check_constraints(constraints("  max_accuracy_drop: 0.01\n"), base, final)
    generic = check_constraints(constraints("  accuracy: {max_drop: 0.01}\n"), base, final)
    assert [(c["value"], c["passed"]) for c in named] == [(c["value"], c["passed"]) for c in generic]
    assert named[0]["name"] == "max_accuracy_drop" and generic[0]["name"] == "accuracy.max_drop"
    assert not named[0]["passed"] and named[0]["value"] == pytest.approx(0.02)
    results = check_constraints(
        constraints("  latency_b1_ms: {max_ratio: 0.8}\n  size_bytes: {max: 2000, min_ratio: 0.5}\n"), base, final
    )
    assert {c["name"]: c["passed"] for c in results} == {
        "latency_b1_ms.max_ratio": True,  # 0.75x
        "size_bytes.max": True,
        "size_bytes.min_ratio": False,  # 0.25x
    }
    nan = check_constraints(constraints("  accuracy: {min: 0.0}\n"), base, metrics(math.nan, 1000, 1.0))
    assert not nan[0]["passed"], "NaN never passes a gate"


def test_gate_errors_name_the_key() -> None:
    assert "constraints.size_bytes: give at least one of min, max" in errors_of(
        VALID + "constraints:\n  size_bytes: {}\n"
    )
    assert "unknown key 'size'" in errors_of(VALID + "constraints:\n  size: {max: 1}\n")
    assert "unknown key 'maximum'" in errors_of(VALID + "constraints:\n  size_bytes: {maximum: 1}\n")
    text = VALID.replace("  torchvision: resnet18\n  num_classes: 10\n", "  huggingface: some/model\n")
    text = text.replace("  kind: digits\n", "  kind: text\n").replace("  image_size: 32\n", "")
    text = text.replace("stages:\n", "stages: []\nunused:\n").split("unused:")[0]
    with pytest.raises(UserError, match=r"constraints\.accuracy\.min needs labels"):
        parse_recipe(text + "output: {dir: runs/x}\nconstraints:\n  accuracy: {min: 0.5}\n", "r.yaml")


def test_a_failed_generic_gate_exits_1_with_reports(tmp_path: Path, recipe_file) -> None:
    recipe = recipe_file(constraints={"size_bytes": {"max": 1000}, "latency_b1_ms": {"max_ratio": 100}})
    result = CliRunner().invoke(app, ["run", str(recipe)])
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    size = descriptors.human_bytes(report["final"]["size_bytes"])
    assert f"size_bytes.max: limit 1000 B, value {size} → FAIL" in result.stdout
    assert [(c["name"], c["passed"]) for c in report["constraints"]] == [
        ("latency_b1_ms.max_ratio", True),
        ("size_bytes.max", False),
    ]
    assert f"| size_bytes.max | 1000 B | {size} | **FAIL** |" in (tmp_path / "out" / "report.md").read_text()


def test_a_registered_metric_becomes_a_report_column(tmp_path: Path, recipe_file, monkeypatch) -> None:
    extra = descriptors.MetricDescriptor("zero_params", "zeros", "higher", "count",
                                         lambda m: m["params"] - m["nonzero_params"], "ratio")  # fmt: skip
    monkeypatch.setitem(descriptors.METRICS, "zero_params", extra)
    result = CliRunner().invoke(app, ["run", str(recipe_file()), "--json"])
    assert result.exit_code == 0, result.output
    markdown = to_markdown(json.loads(result.stdout))
    assert "| zeros | time (s) |" in markdown.splitlines()[6]
    assert "zeros" in CliRunner().invoke(app, ["run", str(recipe_file()), "-o", str(tmp_path / "o2")]).stdout


def test_speed_is_one_convention_original_over_stage_in_gates_tables_and_compare() -> None:
    """A speed-up is original / stage (above 1 is faster) wherever speed is shown or gated."""
    from modelshrink.compare import table

    base, final = metrics(0.95, 4000, 2.0), metrics(0.95, 1000, 0.5)
    [gate] = check_constraints(constraints("  latency_b1_ms: {min_speedup: 3.0}\n"), base, final)
    assert gate["name"] == "latency_b1_ms.min_speedup" and gate["value"] == pytest.approx(4.0) and gate["passed"]
    [slow] = check_constraints(constraints("  latency_b1_ms: {min_speedup: 1.0}\n"), base, metrics(0.95, 1000, 4.0))
    assert slow["value"] == pytest.approx(0.5) and not slow["passed"]
    assert "min_speedup" in errors_of(VALID + "constraints:\n  size_bytes: {min_speedup: 2}\n"), "latencies only"
    b1 = descriptors.METRICS["latency_b1_ms"]
    assert b1.compared(0.5, 2.0) == "4.00x speed-up" and b1.compared(4.0, 2.0) == "0.50x speed-up"
    assert descriptors.METRICS["size_bytes"].compared(1000, 4000) == "0.25x", "sizes stay stage / original"
    rows = table([{"final": base}, {"final": final}], ["earlier", "later"])
    assert next(r for r in rows if r[0] == "latency b1 (ms)")[2] == "0.50 (4.00x speed-up)"
