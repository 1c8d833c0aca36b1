"""One worker's share of a search: Optuna's loop (`Study.optimize`) asks for candidates until the study
holds `--max-trials` of them, whichever workers ran them; `--workers N` starts N - 1 more processes of
this machine on the same storage, each with its share of the cores.

Each trial names its candidate (user attribute `label`) before it runs, and is checked against the
trials numbered before it: a candidate another trial already has is not run again (its values are
copied when that trial finished), and a trial past `--max-trials` is skipped, so the limit holds
exactly however many workers ask at once.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

from modelshrink.errors import UserError, first_line
from modelshrink.progress import log
from modelshrink.recipe.parse import RawRecipe, format_path, validate_raw
from modelshrink.recipe.search import Path as SpacePath
from modelshrink.recipe.search import Space, combinations, label, substitute
from modelshrink.tune import study as studies
from modelshrink.tune.space import choice_of, distributions
from modelshrink.tune.trials import Shared, Trial, record_of, run_candidate


class _Skipped(Exception):
    """A trial that runs nothing (a repeated candidate, or one past --max-trials); Optuna marks it failed."""


@dataclass
class Search:
    """What one worker needs of the search: the recipe, its spaces, the objectives and the study."""

    parsed: RawRecipe
    spaces: dict[SpacePath, Space]
    objectives: list[str]
    max_trials: int
    study: optuna.Study
    pruner: studies.HopelessPruner | optuna.pruners.BasePruner
    trust: Sequence[str]


def work(search: Search, shared: Shared) -> int:
    """Run candidates until the study holds `max_trials` of them (or the space is exhausted, or the sampler
    offers only candidates tried already); returns how many this process ran."""
    reaper, ran, repeats = studies.Reaper(), [0], [0]

    def enough(study: optuna.Study, *_: Any) -> None:
        if reaper.reap(study):
            studies.requeue_lost(study)
        if _finished(search, repeats[0]):
            study.stop()

    def objective(trial: optuna.Trial) -> float | list[float]:
        choice = choice_of(search.spaces, _suggest(trial, distributions(search.spaces)))
        assert choice is not None, "sampled from the spaces' own distributions"
        name = label(choice)
        trial.set_user_attr("worker", studies.worker_id())
        trial.set_user_attr("label", name)
        earlier = studies.candidates_run(search.study, below=trial.number)
        if len(earlier) >= search.max_trials:
            trial.set_user_attr("skipped", "past --max-trials")
            search.study.stop()
            raise _Skipped
        same = next((t for t in earlier if t.user_attrs["label"] == name), None)
        if same is not None:
            repeats[0] += 1
            trial.set_user_attr("skipped", f"a repeat of trial {same.number}")
            if same.state == TrialState.COMPLETE and same.values is not None:
                for gate, violation in same.constraints.items():
                    trial.set_constraint(gate, violation)
                return same.values if len(same.values) > 1 else same.values[0]
            raise _Skipped
        repeats[0] = 0
        ran[0] += 1
        with studies.Heartbeat(trial):
            result = _run(search, shared, trial, choice, name)
        return result

    studies.requeue_lost(search.study)
    if not _finished(search, 0):
        search.study.optimize(objective, callbacks=[enough], catch=(_Skipped,), gc_after_trial=False)
    return ran[0]


def _finished(search: Search, repeats: int) -> bool:
    run = studies.candidates_run(search.study)
    if repeats >= studies.MAX_REPEATS:
        log(f"tune: the sampler proposed {repeats} candidates in a row that were tried already; stopping")
        return True
    return len(run) >= search.max_trials or len({t.user_attrs["label"] for t in run}) >= combinations(search.spaces)


def _suggest(trial: optuna.Trial, wanted: dict[str, BaseDistribution]) -> dict[str, Any]:
    params = {}
    for name, dist in wanted.items():
        if isinstance(dist, CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, dist.choices)
        elif isinstance(dist, IntDistribution):
            params[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step)
        else:
            params[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step)
    return params


def _run(search: Search, shared: Shared, trial: optuna.Trial, choice: dict[SpacePath, Any], name: str
         ) -> float | list[float]:  # fmt: skip
    """One candidate through `run_candidate`, its record kept on the trial; pruned and dropped candidates
    end as Optuna's PRUNED, one that cannot run (e.g. nothing left to prune) as FAIL."""
    spelled = {format_path(path): value for path, value in choice.items()}
    data = substitute(search.parsed.data, choice)
    scores: list[float] = []

    def on_score(score: dict[str, float]) -> None:
        scores.append(score.get("accuracy", float("nan")))
        # one attribute an epoch while it trains (the whole list rewritten each epoch grew the journal by the
        # square of the epochs: 2.8 MB for 3 candidates of 300), the list once it ends
        trial.set_user_attr(f"score {len(scores)}", scores[-1])
        if len(search.objectives) == 1 and scores[-1] == scores[-1]:  # Optuna keeps them for one objective only
            trial.report(scores[-1], len(scores))
        if isinstance(search.pruner, studies.HopelessPruner) and search.pruner.cannot_pass(search.study, scores):
            raise optuna.TrialPruned(f"stopped after epoch {len(scores)}, accuracy {scores[-1]:.4f}: no finished "
                                     "candidate recovered enough from there to pass")  # fmt: skip

    def on_settled(values: Callable[[], list[float]], stage: str) -> None:
        if not isinstance(search.pruner, studies.HopelessPruner):
            return
        beaten = search.pruner.beaten_by(search.study, values)
        if beaten is not None:
            theirs = ", ".join(f"{n} {v:.4g}" for n, v in zip(search.objectives, beaten.values, strict=True))
            mine = ", ".join(f"{n} {v:.4g}" for n, v in zip(search.objectives, values(), strict=True))
            raise optuna.TrialPruned(f"stopped after {stage} with {mine}, settled: trial {beaten.number} passed "
                                     f"with {theirs}")  # fmt: skip

    try:
        recipe = validate_raw(search.parsed, data).trusting(search.trust)
        result = run_candidate(shared, recipe, data["stages"], name, spelled, search.objectives, on_score, on_settled)
    except optuna.TrialPruned as exc:
        _keep_scores(trial, scores)
        log(f"tune {name}: pruned, {exc}")
        _keep(trial, Trial(name, spelled, "pruned", note=str(exc)))
        raise
    except UserError as exc:  # this candidate cannot run on this model (e.g. nothing left to prune)
        log(f"tune {name}: cannot run ({exc})")
        _keep(trial, Trial(name, spelled, "failed", note=f"cannot run: {first_line(exc)}"))
        raise _Skipped from None
    _keep_scores(trial, scores)
    _keep(trial, result)
    if result.status == "dropped" or result.values is None:
        raise optuna.TrialPruned(result.note)
    for index, gate in enumerate(result.gates):  # a gate's name may repeat (one per export)
        trial.set_constraint(f"{index} {gate['name']}", _violation(gate))
    quality = (result.metrics or {}).get("accuracy")
    trial.set_user_attr("quality", quality)
    return result.values if len(result.values) > 1 else result.values[0]


def _keep_scores(trial: optuna.Trial, scores: list[float]) -> None:
    if scores:
        trial.set_user_attr("scores", scores)


def _keep(trial: optuna.Trial, result: Trial) -> None:
    trial.set_user_attr("record", record_of(result))


def _violation(gate: dict[str, Any]) -> float:
    """How far a gate's value is past its limit, relative to the limit (> 0 failed, <= 0 passed)."""
    value, limit = gate["value"], gate["limit"]
    if value is None or value != value:
        return 1.0
    distance = abs(value - limit) / max(abs(limit), 1e-9)
    return -distance if gate["passed"] else max(distance, 1e-9)


def spawn(count: int, argv: Sequence[str], threads: int) -> list[subprocess.Popen[bytes]]:
    """Start `count` more local workers (`modelshrink tune ... --worker`), each with `threads` threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "modelshrink.cli", "tune", *argv, "--worker"]
    return [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, preexec_fn=_die_with_parent)
            for _ in range(count)]  # fmt: skip


def _die_with_parent() -> None:
    """A local worker ends with the process that started it, even one killed outright (SIGKILL): left
    running, it would go on taking candidates that no process writes a winner for. Its running trial is
    then failed by the next worker or --resume (its pid is gone) and runs again. Linux's prctl
    PR_SET_PDEATHSIG; elsewhere a worker outlives a killed parent (it still stops at --max-trials)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def wait(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        code = child.wait()
        if code not in (0, 1):
            log(f"tune: a worker (pid {child.pid}) stopped with exit code {code}; its trial is failed, the rest stand")
