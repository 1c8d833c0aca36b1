"""The CLI end to end on a tiny model: exit codes, outputs, report schema, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import modelshrink
from modelshrink.cli import app
from modelshrink.descriptors import METRIC_KEYS
from modelshrink.environment import ISA_FEATURES
from tests.conftest import output_files, tiny_recipe, write_recipe

runner = CliRunner()
LATENCY_KEYS = {"batch1_median", "batch1_p95", "batchN_median", "batchN_p95", "batch_n", "threads", "attempts"}
# what the plausibility checks add when needed, and what a compiled model adds (`compile: auto` may choose it)
OPTIONAL_LATENCY_KEYS = {"warnings", "remeasured", "isolation", "compile_s", "compiles"}


def test_run_writes_checkpoint_and_reports_with_the_stable_schema(tmp_path: Path, recipe_file) -> None:
    recipe = recipe_file(
        stages=[{"kind": "finetune", "epochs": 2, "lr": 0.01}, {"kind": "prune", "amount": 0.4}, {"kind": "quantize"}]
    )
    result = runner.invoke(app, ["run", str(recipe), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # stdout holds the JSON and nothing else
    out = tmp_path / "out"
    # `backend: auto` keeps compiled PT2E int8 where it measures faster on this CPU: then its package is written too
    packaged = any(f.startswith("model.compiled.pt2: the compiled model packaged") for f in report["findings"])
    expected = sorted([*output_files(), *(["model.compiled.pt2"] if packaged else [])])
    assert sorted(p.name for p in out.iterdir()) == expected
    assert json.loads((out / "report.json").read_text()) == report
    for key in ("recipe", "version", "baseline", "final", "stages", "constraints", "passed", "schema_version"):
        assert key in report
    assert [s["name"] for s in report["stages"]] == ["finetune1", "prune2", "quantize3"]
    for metrics in [report["baseline"], report["final"]] + [s["metrics"] for s in report["stages"]]:
        assert tuple(metrics) == METRIC_KEYS and set(metrics["latency_ms"]) - OPTIONAL_LATENCY_KEYS == LATENCY_KEYS
    stage = report["stages"][1]
    assert set(stage) == {"name", "kind", "params", "metrics", "duration_s", "notes", "speedup"}
    assert stage["params"]["amount"] == 0.4
    timed = stage["metrics"]["latency_ms"], report["baseline"]["latency_ms"]
    assert stage["speedup"] == {  # original / stage: above 1 is faster
        size: timed[1][f"{size}_median"] / timed[0][f"{size}_median"] for size in ("batch1", "batchN")
    }
    assert report["stages"][0]["metrics"]["accuracy"] > report["baseline"]["accuracy"]
    assert report["final"]["size_bytes"] == (out / "model.pt").stat().st_size
    assert report["final"]["size_bytes"] < report["baseline"]["size_bytes"]  # int8 weights
    env = report["environment"]
    assert env["torch_threads"] >= 1 and env["torch_cpu_capability"] and env["torch"] == torch.__version__
    assert env["cpu_features"] is None or set(env["cpu_features"]) <= set(ISA_FEATURES)
    md = (out / "report.md").read_text()
    assert "| prune2 (prune) |" in md and "pt)" in md and "x)" in md
    assert f"({env['torch_cpu_capability']} kernels)" in md and "Machine:" in md
    reloaded = modelshrink.load(out / "model.pt")
    if packaged:  # the compiled PT2E graph, run from its package
        assert type(reloaded).__name__ == "Compiled" and reloaded(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    else:
        assert "quantized" in type(reloaded[1]).__module__


def test_constraint_failure_exits_1_after_writing_reports(tmp_path: Path, recipe_file) -> None:
    recipe = recipe_file(
        stages=[
            {"kind": "finetune", "epochs": 3, "lr": 0.01},
            {"kind": "prune", "amount": 0.95, "importance": "random"},
        ],
        constraints={"max_accuracy_drop": 0.0, "min_accuracy": 0.99},
    )
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 1
    assert "constraint failed: " in result.stderr and "min_accuracy" in result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["passed"] is False
    assert {c["name"]: c["passed"] for c in report["constraints"]} == {"max_accuracy_drop": True, "min_accuracy": False}
    assert "**FAIL**" in (tmp_path / "out" / "report.md").read_text()


def test_user_errors_exit_2_with_one_line_and_write_nothing(tmp_path: Path, recipe_file) -> None:
    bad = recipe_file(stages=[{"kind": "prune", "amount": 1.5}])
    result = runner.invoke(app, ["run", str(bad)])
    assert result.exit_code == 2
    line = bad.read_text().splitlines().index("  amount: 1.5") + 1
    assert result.stderr.strip() == f"error: {bad}:{line} stages[0].amount: must be in (0, 1), got 1.5"
    assert not (tmp_path / "out").exists()

    wrong_classes = recipe_file(data={"kind": "synthetic", "channels": 1, "image_size": 8, "num_classes": 3})
    result = runner.invoke(app, ["run", str(wrong_classes)])
    assert result.exit_code == 2 and "model outputs 10 classes but the data has 3" in result.stderr

    result = runner.invoke(app, ["run", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "recipe file not found" in result.stderr
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_force_and_input_is_never_overwritten(tmp_path: Path, recipe_file) -> None:
    recipe = recipe_file()
    assert runner.invoke(app, ["run", str(recipe)]).exit_code == 0
    first = (tmp_path / "out" / "model.pt").read_bytes()
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 2 and "already exists; pass --force" in result.stderr
    assert runner.invoke(app, ["run", str(recipe), "--force", "--set", "stages[0].amount=0.7"]).exit_code == 0
    assert (tmp_path / "out" / "model.pt").read_bytes() != first
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging leftovers

    chained = write_recipe(
        tmp_path / "chain.yaml",
        tiny_recipe(
            tmp_path, model={"checkpoint": str(tmp_path / "out" / "model.pt")}, output={"dir": str(tmp_path / "out")}
        ),
    )
    result = runner.invoke(app, ["run", str(chained), "--force"])
    assert result.exit_code == 2 and "holds the input checkpoint" in result.stderr
    result = runner.invoke(app, ["run", str(chained), "--output", str(tmp_path / "out2"), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["baseline"]["sparsity"] > 0.3  # started from the pruned checkpoint


def test_a_failing_stage_leaves_no_output(tmp_path: Path, recipe_file, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelshrink.recipe.stage_specs import UnstructuredPruneSpec
    from modelshrink.registry import STAGES

    class Boom(STAGES.handlers[UnstructuredPruneSpec]):  # type: ignore[misc, valid-type]
        def apply(self, model, ctx):
            raise RuntimeError("stage exploded")

    monkeypatch.setitem(STAGES.handlers, UnstructuredPruneSpec, Boom)
    with pytest.raises(RuntimeError, match="stage exploded"):
        modelshrink.run_recipe(recipe_file())
    assert not (tmp_path / "out").exists()
    # an exception (a bug, a broken model) leaves nothing; an interrupt keeps --resume's state
    # (tests/cli/test_resume_and_ddp.py)
    assert [p.name for p in tmp_path.glob(".*")] == []


def test_validate_and_inspect_commands(tmp_path: Path, recipe_file) -> None:
    recipe = recipe_file()
    result = runner.invoke(app, ["validate", str(recipe)])
    assert result.exit_code == 0 and "ok (1 stage: prune1)" in result.stdout
    assert runner.invoke(app, ["validate", str(recipe), "--set", "seed=x"]).exit_code == 2
    assert runner.invoke(app, ["run", str(recipe)]).exit_code == 0
    result = runner.invoke(app, ["inspect", str(tmp_path / "out" / "model.pt"), "--json"])
    info = json.loads(result.stdout)
    weights = 64 * 32 + 32 * 32 + 32 * 10  # the zoo MLP's three Linear weights; biases are not pruned
    assert info["totals"]["params"] - info["totals"]["nonzero_params"] == weights // 2
    table = runner.invoke(app, ["inspect", str(tmp_path / "out" / "model.pt")])
    assert table.exit_code == 0 and "total" in table.stdout and "Linear" in table.stdout
    assert runner.invoke(app, ["inspect", str(tmp_path / "nope.pt")]).exit_code == 2


def test_bundled_recipes_validate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # where the main job's checkpoint is missing until the baseline recipe ran
    prune20 = Path(__file__).parents[2] / "recipes" / "resnet50_prune20.yaml"
    result = runner.invoke(app, ["validate", str(prune20)])
    assert result.exit_code == 2
    line = 1 + next(n for n, text in enumerate(prune20.read_text().splitlines()) if text.startswith("  checkpoint:"))
    missing = "model.checkpoint: runs/digits_resnet50_baseline/model.pt does not exist"
    assert f"{prune20}:{line} {missing}\n" in result.stderr
    Path("runs/digits_resnet50_baseline").mkdir(parents=True)
    Path("runs/digits_resnet50_baseline/model.pt").touch()  # validate checks that inputs exist, not their bytes
    Path("runs/digits_resnet18_baseline").mkdir(parents=True)
    Path("runs/digits_resnet18_baseline/model.pt").touch()
    Path("runs/boxnet.pt").touch()  # the inputs the examples' recipes say how to make
    Path("runs/photos").mkdir()
    for recipe in sorted(prune20.parent.glob("*.yaml")):
        result = runner.invoke(app, ["validate", str(recipe)])
        assert result.exit_code == 0, f"{recipe}: {result.stderr}"


def test_a_stage_that_breaks_the_model_names_the_layer(tmp_path: Path, recipe_file) -> None:
    recipe = recipe_file(
        model={"factory": "tests.stages.test_structured:HardcodedWidth"},
        stages=[{"kind": "prune", "method": "channel", "amount": 0.5}],
    )
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 2
    assert "stage 'prune1' left a model that fails at layer 'head'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_transfer_learning_to_new_classes_end_to_end(tmp_path: Path, recipe_file) -> None:
    recipe = recipe_file(
        model={"factory": "modelshrink.models.zoo:mlp", "kwargs": {"in_features": 64, "hidden": 32, "num_classes": 3}},
        stages=[{"kind": "finetune", "epochs": 3, "lr": 0.01, "num_classes": 10, "strategy": "full"}],
    )
    result = runner.invoke(app, ["run", str(recipe), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["final"]["accuracy"] > report["baseline"]["accuracy"]
    assert report["baseline"]["loss"] is None, "the 3-class head has no loss on 10-class labels: null, not NaN"
    model = modelshrink.load(tmp_path / "out" / "model.pt")
    assert model[5].out_features == 10
