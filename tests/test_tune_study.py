"""`tune` on Optuna (issue #28): workers sharing one journal storage, a worker killed mid-trial, the pruner
stopping candidates mid-training (the gate) or before training (beaten on settled objectives), several
objectives giving a Pareto front."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from typer.testing import CliRunner

from modelshrink.cli import app
from tests.conftest import FAST_EVAL, tiny_recipe, write_recipe

runner = CliRunner()
ROOT = Path(__file__).parents[1]
AMOUNTS = {"search": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}


def slow_recipe(tmp_path: Path, amounts: dict[str, Any] = AMOUNTS, slow: bool = True) -> Path:
    """Channel pruning of the tiny MLP at several amounts; with `slow`, each candidate's evaluation takes a
    second (a user metric that sleeps), so that workers overlap. The gate on parameters is exact on any CPU."""
    recipe = tiny_recipe(
        tmp_path,
        stages=[{"kind": "prune", "method": "channel", "amount": amounts}],
        evaluate={**FAST_EVAL, "metrics": ["tests.data.own:slow_metric"] if slow else []},
        constraints={"params": {"min_ratio": 0.58}},
    )
    return write_recipe(tmp_path / f"recipe{'_slow' if slow else ''}.yaml", recipe)


def tune_process(recipe: Path, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "modelshrink.cli", "tune", str(recipe), "-o", str(out), "--objective", "macs",
               *extra]  # fmt: skip
    return subprocess.Popen(command, env=env, cwd=recipe.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def study_trials(journal: Path, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    storage = JournalStorage(JournalFileBackend(str(journal)))
    return optuna.load_study(storage=storage, study_name=name).get_trials()


def summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "trials.json").read_text())


def test_two_workers_share_one_journal_and_find_the_one_workers_best(tmp_path: Path) -> None:
    """`--workers 2`: this process and one it starts (which joins after importing torch and measuring the
    baseline, seconds later: candidates take a second each here) run distinct candidates of one grid."""
    amounts = {"search": {"min": 0.04, "max": 0.48, "step": 0.04}}
    alone = slow_recipe(tmp_path, amounts, slow=False)  # the same candidates and gates, measured at once
    result = runner.invoke(app, ["tune", str(alone), "-o", str(tmp_path / "alone"), "--objective", "macs"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "two"
    two = runner.invoke(app, ["tune", str(slow_recipe(tmp_path, amounts)), "-o", str(out), "--objective", "macs",
                              "--workers", "2"])  # fmt: skip
    assert two.exit_code == 0, two.output
    assert summary(out)["best"] == summary(tmp_path / "alone")["best"] == "stages[0].amount=0.32"
    trials = [t for t in study_trials(out / "study.journal") if "skipped" not in t.user_attrs]
    labels = [t.user_attrs["label"] for t in trials]
    assert sorted(labels) == sorted(t["label"] for t in summary(tmp_path / "alone")["trials"]), "each candidate once"
    workers = {t.user_attrs["worker"]["pid"] for t in trials}
    assert len(workers) == 2, f"both processes ran candidates: {workers}"
    assert (out / "best" / "report.json").is_file() and (out / "tuned.yaml").is_file()


def test_a_worker_killed_mid_trial_loses_only_that_trial(tmp_path: Path) -> None:
    """Two `tune` processes (as on two machines: each its own output directory) on one journal; one is
    killed while a trial of its own runs. The other fails that trial, runs its candidate again, and
    writes the winner; the killed one wrote nothing."""
    recipe, journal = slow_recipe(tmp_path), tmp_path / "shared.journal"
    shared = ["--storage", str(journal), "--study", "s"]
    victim = tune_process(recipe, tmp_path / "a", *shared)
    survivor = tune_process(recipe, tmp_path / "b", *shared)
    deadline, running = time.monotonic() + 120, []
    while not running and time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            trials = study_trials(journal, "s")
        except KeyError:  # the study is not made yet
            continue
        running = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("worker", {}).get("pid")
                   == victim.pid]  # fmt: skip
    if not running:
        pytest.fail("the first worker never ran a trial")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    _, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err.decode()
    trials = study_trials(journal, "s")
    lost = [t for t in trials if t.state == TrialState.FAIL and "lost" in t.user_attrs]
    assert [t.number for t in lost] == [running[0].number], "only the killed worker's trial is lost"
    done = summary(tmp_path / "b")["trials"]
    assert sorted(t["label"] for t in done if t["status"] != "lost") == sorted(
        f"stages[0].amount={a}" for a in AMOUNTS["search"]
    ), "every candidate finished once, the lost one run again"
    assert [t["status"] for t in done].count("lost") == 1
    assert not (tmp_path / "a" / "trials.json").exists() and (tmp_path / "b" / "best" / "report.json").is_file()


def test_a_study_continued_with_a_larger_budget_is_written_again(tmp_path: Path) -> None:
    """The worker that sees the study end writes it: again when a later `tune` on the same storage raised
    --max-trials and ran more (each end elects its own writer)."""
    recipe, journal = slow_recipe(tmp_path, slow=False), tmp_path / "shared.journal"
    for out, budget in (("first", "2"), ("more", "4")):
        result = runner.invoke(app, ["tune", str(recipe), "-o", str(tmp_path / out), "--objective", "macs",
                                     "--storage", str(journal), "--study", "s", "--max-trials", budget,
                                     "--sampler", "grid"])  # fmt: skip
        assert result.exit_code in (0, 1), result.output  # 1: none of these candidates passed (reports written)
        assert len(summary(tmp_path / out)["trials"]) == int(budget), out
        assert (tmp_path / out / "tune.md").is_file()


def test_a_candidate_left_running_by_a_dead_worker_runs_again_before_the_winner_is_written(tmp_path: Path) -> None:
    """The race a killed worker can leave: every other candidate has run when its worker dies, so the
    survivor has nothing left to draw; it must still run the lost candidate before writing the winner."""
    recipe, journal = slow_recipe(tmp_path, slow=False), tmp_path / "shared.journal"
    common = ["--objective", "macs", "--storage", str(journal), "--study", "s", "--sampler", "grid"]
    first = runner.invoke(app, ["tune", str(recipe), "-o", str(tmp_path / "first"), "--max-trials", "5", *common])
    assert first.exit_code in (0, 1), first.output
    study = optuna.load_study(storage=JournalStorage(JournalFileBackend(str(journal))), study_name="s")
    done = [t for t in study.get_trials() if "label" in t.user_attrs]
    [missing] = {f"stages[0].amount={a}" for a in AMOUNTS["search"]} - {t.user_attrs["label"] for t in done}
    [(name, distribution)] = done[0].distributions.items()
    assert isinstance(distribution, optuna.distributions.CategoricalDistribution), "a list of amounts"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    study.enqueue_trial({name: float(missing.split("=")[1])})
    orphan = study.ask()  # RUNNING, as a worker leaves it when killed
    orphan.suggest_categorical(name, distribution.choices)
    orphan.set_user_attr("label", missing)
    orphan.set_user_attr("worker", {"host": socket.gethostname(), "pid": int(dead.stdout)})
    more = runner.invoke(app, ["tune", str(recipe), "-o", str(tmp_path / "more"), "--max-trials", "6", *common])
    assert more.exit_code in (0, 1), more.output
    trials = summary(tmp_path / "more")["trials"]
    assert [t["label"] for t in trials if t["status"] == "lost"] == [missing]
    assert missing in [t["label"] for t in trials if t["status"] != "lost"], "the lost candidate ran again"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state  # a zombie has ended; nobody may be left to reap it in a container


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_local_workers_end_with_a_parent_killed_outright(tmp_path: Path) -> None:
    amounts = {"search": {"min": 0.04, "max": 0.48, "step": 0.04}}  # 12 candidates of a second each
    parent = tune_process(slow_recipe(tmp_path, amounts), tmp_path / "out", "--workers", "2")
    children: list[int] = []
    deadline = time.monotonic() + 60
    while not children and time.monotonic() < deadline:
        time.sleep(0.2)
        text = Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text()
        children = [int(pid) for pid in text.split()]
    assert children, "the parent started a worker"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5  # far less than what is left of the search
    while any(map(_alive, children)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(_alive, children)), "a worker outlived the parent that started it"


def digits_recipe(tmp_path: Path) -> Path:
    """Train an MLP on the bundled digits, prune it by an amount searched, train again; the gate is an
    accuracy floor that the heavily pruned candidates cannot reach."""
    recipe = tiny_recipe(
        tmp_path,
        data={"kind": "digits", "channels": 1, "image_size": 8, "batch_size": 64},
        stages=[
            {"kind": "finetune", "name": "train", "epochs": 3, "lr": 0.01, "keep_best": False},
            {"kind": "prune", "amount": {"search": [0.2, 0.97, 0.3, 0.98, 0.99]}},
            {"kind": "finetune", "name": "recover", "epochs": 3, "lr": 0.003, "keep_best": False},
        ],
        constraints={"min_accuracy": 0.8},
    )
    return write_recipe(tmp_path / "digits.yaml", recipe)


def test_the_gate_pruner_stops_hopeless_candidates_mid_training_and_keeps_the_winner(tmp_path: Path) -> None:
    recipe = digits_recipe(tmp_path)
    pruned = runner.invoke(app, ["tune", str(recipe), "-o", str(tmp_path / "pruned"), "--objective", "size",
                                 "--pruner", "gate"])  # fmt: skip
    assert pruned.exit_code == 0, pruned.output
    full = runner.invoke(app, ["tune", str(recipe), "-o", str(tmp_path / "full"), "--objective", "size",
                               "--pruner", "none"])  # fmt: skip
    assert full.exit_code == 0, full.output
    assert summary(tmp_path / "pruned")["best"] == summary(tmp_path / "full")["best"], "the same winner"
    trials = study_trials(tmp_path / "pruned" / "study.journal")
    stopped = [t for t in trials if t.state == TrialState.PRUNED]
    assert stopped, "a candidate that cannot reach 0.8 accuracy was stopped"
    for trial in stopped:
        assert len(trial.user_attrs["scores"]) < 6, "it ran fewer epochs than the 3 + 3 of a finished one"
        assert trial.user_attrs["record"]["status"] == "pruned"
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert all(len(t.user_attrs["scores"]) == 6 for t in finished)
    unpruned = study_trials(tmp_path / "full" / "study.journal")
    assert all(len(t.user_attrs["scores"]) == 6 for t in unpruned), "--pruner none: every candidate trains to its end"
    assert "pruned (stopped after epoch 4, accuracy" in (tmp_path / "pruned" / "tune.md").read_text()


def test_a_candidate_beaten_on_settled_objectives_stops_before_training_and_keeps_the_winner(tmp_path: Path) -> None:
    """MACs are known once the pruning stage ran (training and quantization cannot change them): a candidate
    with more than a finished one that passed cannot win, and stops before its training and quantization."""
    recipe = tiny_recipe(
        tmp_path,
        stages=[
            {"kind": "prune", "method": "channel", "amount": {"search": [0.1, 0.2, 0.3, 0.4, 0.5]}},
            {"kind": "finetune", "name": "recover", "epochs": 2, "lr": 0.01},
            {"kind": "quantize", "mode": "dynamic"},
        ],
        constraints={"params": {"min_ratio": 0.3}},
    )
    path = write_recipe(tmp_path / "macs.yaml", recipe)
    runs = {}
    for pruner in ("hopeless", "none"):
        result = runner.invoke(app, ["tune", str(path), "-o", str(tmp_path / pruner), "--objective", "macs",
                                     "--pruner", pruner])  # fmt: skip
        assert result.exit_code == 0, result.output
        runs[pruner] = study_trials(tmp_path / pruner / "study.journal")
    assert summary(tmp_path / "hopeless")["best"] == summary(tmp_path / "none")["best"] == "stages[0].amount=0.5"
    stopped = [t for t in runs["hopeless"] if t.state == TrialState.PRUNED]
    assert stopped, "the grid's order puts a smaller candidate before a larger one"
    best_before = {}
    for trial in runs["hopeless"]:
        earlier = [t for t in runs["hopeless"] if t.number < trial.number and t.state == TrialState.COMPLETE]
        best_before[trial.number] = min((t.values[0] for t in earlier), default=None)
    for trial in stopped:
        assert "scores" not in trial.user_attrs, "stopped before its training's first epoch"
        assert trial.user_attrs["record"]["status"] == "pruned"
        assert "stopped after prune1 with macs" in trial.user_attrs["record"]["note"]
    assert all(len(t.user_attrs["scores"]) == 2 for t in runs["none"]), "--pruner none: every candidate trains"
    finished = [t for t in runs["hopeless"] if t.state == TrialState.COMPLETE]
    assert all(best_before[t.number] is None or t.values[0] < best_before[t.number] for t in finished), (
        "only a candidate with fewer MACs than every finished one ran to its end"
    )
    assert "pruned (stopped after prune1" in (tmp_path / "hopeless" / "tune.md").read_text()


def test_objectives_settle_once_no_later_stage_may_change_what_they_measure(tmp_path: Path) -> None:
    from modelshrink.recipe.parse import load_recipe
    from modelshrink.tune.trials import settled

    def stages(*specs: dict[str, Any]) -> list[Any]:
        return load_recipe(write_recipe(tmp_path / "s.yaml", tiny_recipe(tmp_path, stages=list(specs)))).stages

    prune, train = {"kind": "prune", "method": "channel", "amount": 0.3}, {"kind": "finetune", "epochs": 1}
    quantize = {"kind": "quantize", "mode": "dynamic"}
    plan = stages(prune, train, quantize)
    assert settled(plan, 0, ["macs"]), "training and quantization keep the count of MACs"
    assert not settled(plan, 0, ["latency_b1"]) and not settled(plan, 0, ["size"]), "quantization changes both"
    assert not settled(plan, 2, ["macs"]), "nothing left to skip after the last stage"
    assert not settled(plan, 0, ["macs", "accuracy_drop"]), "accuracy is known only at the end"
    assert not settled(plan, 0, ["model.onnx:macs"]), "an export's metrics only once it is made"
    assert settled(stages(prune, train), 0, ["latency_b1", "size", "macs"])
    assert not settled(stages(prune, {**train, "keep_sparsity": False}), 0, ["size"]), "zeros may fill in"
    assert not settled(stages(prune, {**train, "num_classes": 3}), 0, ["macs"]), "a new classifier"
    assert not settled(stages(train, prune, train), 0, ["macs"]), "a pruning stage is still to come"


def test_the_pruner_stops_only_what_a_finished_passing_candidate_beats_on_every_objective() -> None:
    from optuna.trial import create_trial

    from modelshrink.tune.study import TIMING_MARGIN, HopelessPruner

    study = optuna.create_study(directions=["minimize", "minimize"])
    pruner = HopelessPruner(["latency_b1", "macs"])
    asked = []

    def values(mine: list[float]) -> Any:
        return lambda: asked.append(mine) or mine

    assert pruner.beaten_by(study, values([9.0, 9.0])) is None and not asked, "nothing finished: nothing timed"
    study.add_trial(create_trial(values=[0.1, 10.0], user_attrs={"record": {"status": "failed"}}))
    assert pruner.beaten_by(study, values([9.0, 90.0])) is None and not asked, "a failed candidate beats none"
    study.add_trial(create_trial(values=[0.5, 100.0], user_attrs={"record": {"status": "passed"}}))
    assert pruner.beaten_by(study, values([0.7, 200.0])).values == [0.5, 100.0]
    assert pruner.beaten_by(study, values([0.5 * TIMING_MARGIN * 0.99, 200.0])) is None, "within timing noise"
    assert pruner.beaten_by(study, values([0.7, 100.0])) is None, "as few MACs: it may still be better"
    assert pruner.beaten_by(study, values([0.4, 200.0])) is None, "faster: on the Pareto front"
    assert HopelessPruner(["latency_b1", "macs"], gates_only=True).beaten_by(study, values([9.0, 900.0])) is None


def test_several_objectives_give_a_pareto_front_where_no_trial_dominates_another(tmp_path: Path) -> None:
    recipe = digits_recipe(tmp_path)
    out = tmp_path / "front"
    result = runner.invoke(app, ["tune", str(recipe), "-o", str(out), "--objective", "size", "--objective",
                                 "accuracy_drop", "--sampler", "nsga2", "--max-trials", "5"])  # fmt: skip
    assert result.exit_code in (0, 1), result.output
    found = summary(out)
    assert found["objectives"] == ["size", "accuracy_drop"]
    values = {t["label"]: t["values"] for t in found["trials"] if t["values"]}
    front = found["pareto"]
    assert front and set(front) <= set(values)

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))

    assert not any(dominates(values[a], values[b]) for a in front for b in front), "no front trial dominates another"
    for label in set(values) - set(front):
        assert any(dominates(values[f], values[label]) for f in front), f"{label} is off the front for a reason"
    study = study_trials(out / "study.journal")
    assert all(len(t.values) == 2 for t in study if t.state == TrialState.COMPLETE)
    assert "size | accuracy_drop" in (out / "tune.md").read_text()


def test_an_objective_may_name_an_exports_metric(tmp_path: Path) -> None:
    """`--objective model.onnx:size`: each candidate is exported as `run` exports it, and the search ranks the
    deployable file; a file no export writes is one line."""
    recipe = tiny_recipe(
        tmp_path,
        stages=[{"kind": "prune", "method": "channel", "amount": {"search": [0.1, 0.3]}}],
        export=[{"format": "onnx"}],
        constraints={"params": {"min_ratio": 0.58}},
    )
    path = write_recipe(tmp_path / "onnx.yaml", recipe)
    out = tmp_path / "search"
    result = runner.invoke(app, ["tune", str(path), "-o", str(out), "--objective", "model.onnx:size",
                                 "--objective", "model.onnx:latency_b1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    found = summary(out)
    assert found["best"] == "stages[0].amount=0.3", "the smaller file"
    for trial in found["trials"]:
        exported = trial["exports"]["model.onnx"]
        assert trial["values"][0] == exported["size_bytes"] != trial["metrics"]["size_bytes"]
        assert trial["values"][1] == pytest.approx(
            exported["latency_ms"]["batch1_median"] / trial["original_latency_ms"]["batch1_median"]
        ), "the file's latency as a ratio to the original model's, timed side by side"
    missing = runner.invoke(app, ["tune", str(path), "-o", str(tmp_path / "x"), "--objective", "model.xml:size"])
    assert missing.exit_code == 2 and "no export writes model.xml (the recipe's exports: model.onnx)" in missing.output


@pytest.mark.parametrize(
    ("constraints", "limit"),
    [
        ({"min_accuracy": 0.8}, 0.8),
        ({"max_accuracy_drop": 0.01}, 0.89),
        ({"accuracy": {"min_ratio": 0.5}}, 0.45),
        ({"min_accuracy": 0.8, "max_accuracy_drop": 0.05}, 0.85),
        ({"min_cosine": 0.9}, None),
    ],
)
def test_the_pruner_aims_at_the_lowest_accuracy_every_gate_passes(constraints: dict, limit: float | None,
                                                                   tmp_path: Path) -> None:  # fmt: skip
    from modelshrink.engine import Baseline
    from modelshrink.recipe.parse import load_recipe
    from modelshrink.tune import accuracy_limit

    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, constraints=constraints)))
    found = accuracy_limit(recipe, Baseline(None, None, {"accuracy": 0.9, "cosine": 1.0}, None))  # type: ignore[arg-type]
    assert found == (pytest.approx(limit) if limit is not None else None)


def test_the_gate_pruner_waits_for_two_finished_candidates_and_their_largest_recovery() -> None:
    from optuna.trial import create_trial

    from modelshrink.tune.study import HopelessPruner

    study = optuna.create_study()
    pruner = HopelessPruner(["size"], limit=0.9)

    def finished(scores: list[float], quality: float) -> None:
        study.add_trial(create_trial(value=1.0, user_attrs={"scores": scores, "quality": quality}))

    finished([0.85, 0.9, 0.95], 0.95)  # gained 0.10 from epoch 1
    assert not pruner.cannot_pass(study, [0.5]), "one finished candidate is too little to judge by"
    finished([0.6, 0.8, 0.92], 0.92)  # gained 0.32 (0.8 of its way to 1.0) from epoch 1, 0.12 (0.6) from epoch 2
    assert pruner.cannot_pass(study, [0.4]), "0.4 + 0.32 and 0.4 + 0.8 * 0.6 = 0.88 both stay under 0.9"
    assert not pruner.cannot_pass(study, [0.5]), "0.5 + 0.8 * 0.5 reaches 0.9: from further down, more to climb"
    assert not pruner.cannot_pass(study, [0.6]), "0.6 + 0.32 reaches 0.9: a finished one shows it can"
    assert pruner.cannot_pass(study, [0.6, 0.7]), "0.7 + 0.6 * 0.3 = 0.88 < 0.9 after epoch 2"
    assert not HopelessPruner(["size"]).cannot_pass(study, [0.0]), "no accuracy gate: it never stops one"
