"""Search spaces and `modelshrink tune` (issue #15): candidates share one baseline, the best that passes
becomes tuned.yaml and is run into best/, nothing passing still writes the table and the closest, --resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import modelshrink
import modelshrink.tune as tuning
from modelshrink.cli import app
from modelshrink.data import build_data
from modelshrink.metrics.accuracy import evaluate_outputs
from modelshrink.recipe.parse import load_recipe
from modelshrink.tune import worker

runner = CliRunner()
AMOUNTS = {"search": {"min": 0.1, "max": 0.5, "step": 0.1}}


def searched(recipe_file, min_params_ratio: float, **sections):
    """Channel pruning of the tiny MLP at 0.1 ... 0.5; a gate on the parameters kept (exact on any CPU)."""
    stages = [{"kind": "prune", "method": "channel", "amount": AMOUNTS}]
    return recipe_file(stages=stages, constraints={"params": {"min_ratio": min_params_ratio}}, **sections)


def test_tune_keeps_the_fastest_candidate_that_passes_and_runs_it(tmp_path: Path, recipe_file) -> None:
    out = tmp_path / "search"
    result = runner.invoke(app, ["tune", str(searched(recipe_file, 0.58)), "--objective", "macs", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "best: stages[0].amount=0.3 (3 of 5 candidates passed)" in result.output
    summary = json.loads((out / "trials.json").read_text())
    statuses = {t["label"]: t["status"] for t in summary["trials"]}
    kept = {0.1: "passed", 0.2: "passed", 0.3: "passed", 0.4: "dropped", 0.5: "dropped"}  # 84% ... 43% of params
    assert statuses == {f"stages[0].amount={amount}": status for amount, status in kept.items()}
    tuned = yaml.safe_load((out / "tuned.yaml").read_text())
    assert tuned["stages"][0]["amount"] == 0.3, "a plain recipe: the search space replaced by its value"
    report = json.loads((out / "best" / "report.json").read_text())
    assert report["stages"][0]["params"]["amount"] == 0.3 and all(c["passed"] for c in report["constraints"])
    md = (out / "tune.md").read_text()
    assert r"**stages\[0\].amount=0.3**" in md and "dropped (after prune1)" in md  # escaped: a name is text
    assert runner.invoke(app, ["run", str(out / "tuned.yaml"), "-o", str(tmp_path / "again")]).exit_code == 0
    latency = runner.invoke(app, ["tune", str(searched(recipe_file, 0.58)), "-o", str(tmp_path / "by_latency")])
    assert latency.exit_code == 0, latency.output
    for trial in json.loads((tmp_path / "by_latency" / "trials.json").read_text())["trials"]:
        if trial["status"] == "passed":  # latency ranks as a ratio to the original timed beside the candidate
            ratio = trial["metrics"]["latency_ms"]["batch1_median"] / trial["original_latency_ms"]["batch1_median"]
            assert trial["objective"] == pytest.approx(ratio)


def test_when_nothing_passes_the_table_and_the_closest_are_written_and_it_exits_1(tmp_path: Path, recipe_file) -> None:
    out = tmp_path / "search"
    result = runner.invoke(app, ["tune", str(searched(recipe_file, 0.99)), "-o", str(out)])
    assert result.exit_code == 1
    assert "no candidate passes every constraint; the closest (stages[0].amount=0.1)" in result.output
    assert yaml.safe_load((out / "closest.yaml").read_text())["stages"][0]["amount"] == 0.1
    assert (out / "tune.md").exists() and not (out / "tuned.yaml").exists() and not (out / "best").exists()


def test_resume_continues_an_interrupted_search(tmp_path: Path, recipe_file, monkeypatch: pytest.MonkeyPatch) -> None:
    """The study's journal is the resume record: finished candidates stand, the one interrupted runs again."""
    recipe, out = searched(recipe_file, 0.58), tmp_path / "search"
    real, ran = worker.run_candidate, []

    def interrupted(shared, recipe, stages, label, *args):
        if len(ran) == 2:
            raise KeyboardInterrupt
        ran.append(label)
        return real(shared, recipe, stages, label, *args)

    monkeypatch.setattr(worker, "run_candidate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tuning.tune(recipe, out, objectives=["macs"])
    assert (out / "study.journal").is_file() and not (out / "trials.json").exists()
    refused = runner.invoke(app, ["tune", str(recipe), "-o", str(out)])
    assert refused.exit_code == 2 and "pass --resume to continue it" in refused.output
    first = list(ran)
    monkeypatch.setattr(worker, "run_candidate", lambda *args: ran.append(args[3]) or real(*args))
    result = runner.invoke(app, ["tune", str(recipe), "-o", str(out), "--objective", "macs", "--resume"])
    assert result.exit_code == 0, result.output
    everything = [f"stages[0].amount={a}" for a in (0.1, 0.2, 0.3, 0.4, 0.5)]
    assert sorted(ran) == everything and ran[:2] == first, "each candidate ran once, the interrupted one again"
    summary = json.loads((out / "trials.json").read_text())
    assert sorted(t["label"] for t in summary["trials"] if t["status"] != "lost") == everything
    assert [t["status"] for t in summary["trials"]].count("lost") == 1, "the interrupted trial is shown as lost"


def test_search_spaces_are_refused_by_run_and_checked_by_tune(tmp_path: Path, recipe_file) -> None:
    recipe = searched(recipe_file, 0.58)
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 2 and "recipe.yaml:" in result.output
    assert "stages[0].amount: a search space; run `modelshrink tune` on this recipe" in result.output
    checked = runner.invoke(app, ["validate", str(recipe)])
    assert checked.exit_code == 0 and "1 search spaces for `modelshrink tune`" in checked.output
    bad = recipe_file(stages=[{"kind": "prune", "amount": {"search": [0.5, 1.5]}}])
    for command in ("tune", "validate"):
        result = runner.invoke(app, [command, str(bad)])
        assert result.exit_code == 2 and "stages[0].amount: must be in (0, 1), got 1.5" in result.output
    outside = recipe_file(seed={"search": [0, 1]})
    result = runner.invoke(app, ["tune", str(outside)])
    assert result.exit_code == 2 and "search spaces are allowed under stages only" in result.output
    assert not (tmp_path / "out_tune").exists(), "nothing is written for a bad recipe"


def test_the_winners_run_reproduces_its_trial(tmp_path: Path, recipe_file) -> None:
    """The second candidate trains after the first one did: its trial must start from the random state a
    run of it starts from, or best/ (a fresh run of tuned.yaml) reports another model."""
    stages = [
        {"kind": "prune", "method": "channel", "amount": {"search": [0.1, 0.2]}},
        {"kind": "finetune", "epochs": 1, "lr": 0.01},
    ]
    recipe = recipe_file(stages=stages, constraints={"params": {"min_ratio": 0.5}})
    out = tmp_path / "search"
    result = runner.invoke(app, ["tune", str(recipe), "--objective", "macs", "-o", str(out)])
    assert result.exit_code == 0, result.output
    trials = {t["label"]: t for t in json.loads((out / "trials.json").read_text())["trials"]}
    trial = trials["stages[0].amount=0.2"]["metrics"]
    tuned = load_recipe(out / "tuned.yaml")
    data = build_data(tuned.data, tuned.seed, tuned.model, tuning_split=True)
    best = modelshrink.load(out / "best" / "model.pt")
    on_selection, _ = evaluate_outputs(best, data.tune, None, labeled=data.labeled, class_targets=data.class_targets)
    assert on_selection["loss"] == pytest.approx(trial["loss"], rel=1e-6), "the trial's model, made again"
    run = json.loads((out / "best" / "report.json").read_text())["final"]
    assert run["loss"] != trial["loss"], "trials are judged on the selection split, best/ reports validation"


def test_candidates_are_judged_on_data_held_out_of_training_never_on_validation(
    tmp_path: Path, recipe_file, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Which candidates pass is decided on the selection split (held out of training); the validation
    split is only ever evaluated by best/'s run, after the choice."""
    import modelshrink.metrics as metrics

    evaluated: list[object] = []
    original = metrics.evaluate_outputs

    def recording(model, loader, *args, **kwargs):  # type: ignore[no-untyped-def]
        evaluated.append(loader.dataset)
        return original(model, loader, *args, **kwargs)

    monkeypatch.setattr(metrics, "evaluate_outputs", recording)
    recipe = searched(recipe_file, 0.58)
    out = tmp_path / "search"
    result = runner.invoke(app, ["tune", str(recipe), "--objective", "macs", "-o", str(out)])
    assert result.exit_code == 0, result.output
    parsed = load_recipe(out / "tuned.yaml")
    data = build_data(parsed.data, parsed.seed, parsed.model, tuning_split=True)
    selection, validation = len(data.tune.dataset), len(data.val.dataset)
    assert selection != validation and f"judged on {selection} training samples held out" in result.output
    sizes = [len(dataset) for dataset in evaluated]  # type: ignore[arg-type]
    first_run = sizes.index(validation)
    assert first_run >= 1 + 5 and set(sizes[:first_run]) == {selection}, "baseline and 5 candidates: selection only"


def test_every_candidate_and_the_final_run_start_with_an_empty_compile_cache(
    tmp_path: Path, recipe_file, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compiled candidates share dynamo's cache for the wrappers' forward code; past its limit a model runs
    eager and its latency would be the eager one's, so the cache is emptied before each, as a run starts."""
    import torch

    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    out = tmp_path / "search"
    result = runner.invoke(app, ["tune", str(searched(recipe_file, 0.58)), "--objective", "macs", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert len(resets) == 5 + 1, "five candidates and the winner's run"


@pytest.mark.slow
def test_the_recipe_guides_worked_example_on_the_bundled_digits_resnet18(tmp_path: Path) -> None:
    """docs/recipes.md's worked example: baseline -> analyze the tune recipe -> tune -> tuned.yaml runs as a
    plain recipe (CI), all on the bundled recipes with shorter training; the gate is loosened so the short
    training cannot fail it."""
    recipes = Path(__file__).parents[1] / "recipes"
    base = tmp_path / "base"
    short = ["--set", "stages[0].epochs=1", "--set", "evaluate.latency.iterations=2"]
    loose = ["--set", "constraints.min_accuracy=0.5"]
    trained = runner.invoke(
        app, ["run", str(recipes / "digits_resnet18_baseline.yaml"), "-o", str(base), *short, *loose]
    )
    assert trained.exit_code == 0, trained.output
    sets = ["--set", f"model.checkpoint={base / 'model.pt'}", "--set", "constraints.max_accuracy_drop=0.5"]
    tune_recipe = str(recipes / "digits_resnet18_tune.yaml")
    analysis = runner.invoke(app, ["analyze", tune_recipe, *sets, "-o", str(tmp_path / "an"), "--budget-s", "5"])
    assert analysis.exit_code == 0, analysis.output
    assert json.loads((tmp_path / "an" / "sensitivity.json").read_text())["layers"], "a tune recipe is analyzed"
    smaller = ["--set", "stages[0].amount={search: [0.6, 0.9]}", "--set", "stages[2].epochs=1"]
    out = tmp_path / "tune"
    searched = runner.invoke(
        app, ["tune", tune_recipe, *sets, *smaller, *short[2:], "--objective", "latency_b1", "-o", str(out)]
    )
    assert searched.exit_code == 0, searched.output
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert len(trials) == 4 and all(t["status"] == "passed" for t in trials)
    best = json.loads((out / "best" / "report.json").read_text())
    assert [s["name"] for s in best["stages"]] == ["blocks", "channels", "recover", "int8"]
    again = runner.invoke(app, ["run", str(out / "tuned.yaml"), "-o", str(tmp_path / "ci"), *short[2:]])
    assert again.exit_code == 0, again.output
    rerun = json.loads((tmp_path / "ci" / "report.json").read_text())
    assert rerun["final"]["accuracy"] == best["final"]["accuracy"], "tuned.yaml reproduces the best run"


def test_what_auto_chose_by_timing_in_the_winners_trial_is_pinned_in_tuned_yaml(tmp_path: Path, recipe_file) -> None:
    """`channels_last: auto` is decided by timing, which a close call can flip from one run to the next:
    tuned.yaml names the choice its trial made, and best/ (a run of tuned.yaml) follows it."""
    cnn = {"factory": "modelshrink.models.zoo:small_cnn", "kwargs": {"in_channels": 1, "width": 8}}
    stages = [
        {"kind": "prune", "method": "channel", "amount": {"search": [0.1, 0.2]}},
        {"kind": "optimize", "name": "layout", "fold_batchnorm": False, "channels_last": "auto"},
    ]
    recipe = recipe_file(model=cnn, stages=stages, constraints={"params": {"min_ratio": 0.5}})
    out = tmp_path / "search"
    result = runner.invoke(app, ["tune", str(recipe), "--objective", "macs", "-o", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "trials.json").read_text())
    [best] = [t for t in summary["trials"] if t["label"] == summary["best"]]
    chosen = best["resolved"]["1"]["channels_last"]
    assert isinstance(chosen, bool)
    assert yaml.safe_load((out / "tuned.yaml").read_text())["stages"][1]["channels_last"] is chosen
    report = json.loads((out / "best" / "report.json").read_text())
    assert report["stages"][1]["params"]["channels_last"] is chosen
    assert "resolved" not in report["stages"][1]["notes"], "nothing left at auto: the run measured no choice"


def test_a_winner_that_fails_on_validation_exits_1_and_says_so(
    tmp_path: Path, recipe_file, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelshrink import recipe_run
    from modelshrink.errors import ConstraintFailed

    def failing_run(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise ConstraintFailed("constraint failed: min_accuracy (limit 0.9, got 0.8)", {})

    monkeypatch.setattr(recipe_run, "run", failing_run)
    out = tmp_path / "search"
    result = runner.invoke(app, ["tune", str(searched(recipe_file, 0.58)), "--objective", "macs", "-o", str(out)])
    assert result.exit_code == 1
    assert "stages[0].amount=0.3 passed on the selection split, but its run fails on validation" in result.output
    assert (out / "tuned.yaml").exists() and (out / "tune.md").exists()
