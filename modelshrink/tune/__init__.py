"""`modelshrink tune RECIPE`: try the recipe's search spaces, keep the best candidate that passes.

Every candidate shares one model, one data split and one baseline (`tune.trials`). Candidates are
judged on a selection split held out of the training data (the split training stages choose their
epochs on), never on the validation split: best/ reports validation quality that no choice has seen,
and its gates decide the exit code as in any run. Trials are saved
to trials.json as they finish, so `--resume` continues an interrupted search. The winner is written
as tuned.yaml (a plain recipe: no search spaces left) and run once more as `modelshrink run` would (`recipe_run`)
into `best/`, so its checkpoint and reports are exactly what `modelshrink run tuned.yaml` makes; what its
stages chose by timing for `auto` keys is pinned there (`pin_resolved`).
When nothing passes, the trials table and the closest candidate (closest.yaml) are still written and
the exit code is 1: a search never ends with nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from modelshrink import escape, outputs, plots
from modelshrink.data import build_data
from modelshrink.data.bundle import DataBundle
from modelshrink.engine import seed_everything, start
from modelshrink.errors import ConstraintFailed, UserError, first_line
from modelshrink.loading import load_model
from modelshrink.progress import log
from modelshrink.recipe.parse import RawRecipe, format_path, parse_raw, read_recipe_text, validate_raw
from modelshrink.recipe.recipe import Recipe
from modelshrink.recipe.search import Path as SpacePath
from modelshrink.recipe.search import candidates, find_spaces, first_values, label, substitute
from modelshrink.resume import rng_state
from modelshrink.tune.report import markdown, pareto
from modelshrink.tune.trials import OBJECTIVES, Shared, Trial, read_trials, run_candidate

__all__ = ["OBJECTIVES", "tune"]

MAX_TRIALS_BYTES = 50 * 2**20  # a trials.json of the most trials `tune` runs is a few MiB


def tune(
    recipe_path: Path,
    out_dir: Path | None = None,
    *,
    objective: str = "latency_b1",
    max_trials: int = 20,
    resume: bool = False,
    force: bool = False,
    overrides: Sequence[str] = (),
    trust: Sequence[str] = (),
) -> dict[str, Any]:
    """Run the candidates, write the trials and the best (or closest) recipe; see the module docstring.
    `trust` adds modules whose factories the model's checkpoint may name, as `run --trust` does."""
    if objective not in OBJECTIVES:
        raise UserError(f"--objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    parsed = parse_raw(read_recipe_text(recipe_path), str(recipe_path), overrides)
    spaces = find_spaces(parsed)
    if not spaces:
        raise UserError(f"{recipe_path}: no search spaces ({{search: [...]}} under stages); use `modelshrink run`")
    first = validate_raw(parsed, substitute(parsed.data, first_values(spaces))).trusting(trust)
    choices = candidates(spaces, max_trials, first.seed)
    # all valid, or none run
    recipes = [validate_raw(parsed, substitute(parsed.data, choice)).trusting(trust) for choice in choices]
    out = out_dir or first.output.dir.with_name(f"{first.output.dir.name}_tune")
    # --resume continues (so replaces) an earlier search's directory as --force does
    with outputs.claim([outputs.search_directory(out)], first.inputs(recipe_path), force=force or resume) as claim:
        done = _earlier_trials(out, resume, parsed, spaces)
        if force and not resume:  # no earlier winner may stand beside a new search that finds none
            outputs.clear(out, SEARCH_FILES)
        return _search(claim, out, parsed, spaces, first, choices, recipes, done, objective, trust)


def _search(claim: outputs.Claim, out: Path, parsed: RawRecipe, spaces: dict[SpacePath, list[Any]], first: Recipe,
            choices: list[dict], recipes: list[Recipe], done: dict[str, Trial], objective: str,
            trust: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    log(f"tune: {len(choices)} candidates over {len(spaces)} search spaces, objective {objective}")
    # as `run` does, in its order, so that a candidate's stages see the random state a run of it would
    seed_everything(first.seed)
    selection = _selection_data(first)
    model, lineage = load_model(first.model)
    baseline = start(model, lineage, selection, first.evaluate, first.stages, [first.constraints])
    shared = Shared(baseline, selection, rng_state(selection.train.generator))
    trials: list[Trial] = []
    for choice, recipe in zip(choices, recipes, strict=True):
        name = label(choice)
        if name in done:
            trials.append(done[name])
            continue
        raw_stages = substitute(parsed.data, choice)["stages"]
        spelled = {format_path(path): value for path, value in choice.items()}
        try:
            trials.append(run_candidate(shared, recipe, raw_stages, name, spelled, objective))
        except UserError as exc:  # this candidate cannot run on this model (e.g. nothing left to prune)
            log(f"tune {name}: cannot run ({exc})")
            trials.append(Trial(name, spelled, "failed", note=f"cannot run: {first_line(exc)}"))
        # the directory appears with the first trial: a model or data that cannot load leaves nothing behind
        progress = {"objective": objective, "trials": [asdict(t) for t in trials]}
        claim.write(files={out / "trials.json": _json(progress)})
    return _finish(claim, out, parsed.data, choices, trials, objective, baseline.metrics, trust)


# what a search writes beside best/; `tune --force` clears them all before it starts
SEARCH_FILES = ("trials.json", "tuned.yaml", "closest.yaml", "tune.md", "tune.png", "best")


def _selection_data(recipe: Recipe) -> DataBundle:
    """The recipe's data with the tuning split (held out of training) in place of validation: what every
    candidate is measured and judged on, so that the choice never sees the split best/ reports."""
    try:  # not `evaluate.data`: that held-out set is for best/'s report alone
        data = build_data(recipe.data, recipe.seed, recipe.model, tuning_split=True)
    except UserError as exc:
        raise UserError(f"tune judges candidates on data held out of training: {first_line(exc)}") from None
    log(f"tune: candidates are judged on {len(data.tune.dataset)} training samples held out of training "
        f"(data.tune_fraction {recipe.data.tune_fraction}); the validation split only reports best/")  # fmt: skip
    return replace(data, val=data.tune)


def _earlier_trials(out: Path, resume: bool, parsed: RawRecipe, spaces: dict[SpacePath, list[Any]]
                    ) -> dict[str, Trial]:  # fmt: skip
    """The trials an interrupted search already finished (with --resume), each checked against this recipe."""
    progress = out / "trials.json"
    if not resume:
        return {}
    if not progress.exists():
        raise UserError(f"--resume: {out} holds no trials.json of an earlier search")
    trials = _read_trials(progress)
    for trial in trials:
        _check_trial(progress, trial, parsed, spaces)
    return {t.label: t for t in trials}


def _read_trials(progress: Path) -> list[Trial]:
    try:
        with progress.open("rb") as file:
            data = file.read(MAX_TRIALS_BYTES + 1)
        if len(data) > MAX_TRIALS_BYTES:
            raise ValueError(f"larger than {MAX_TRIALS_BYTES // 2**20} MiB")
        return read_trials(data)
    except OSError as exc:
        raise UserError(f"--resume: cannot read {progress} ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise UserError(f"{progress}: not a trials.json of modelshrink tune: {first_line(exc)}") from None


def _check_trial(progress: Path, trial: Trial, parsed: RawRecipe, spaces: dict[SpacePath, list[Any]]) -> None:
    """A resumed trial is someone's file: its choice must be a candidate of this recipe's spaces, and what it
    says its stages resolved (pasted into tuned.yaml, which is then run) only `auto` keys of those stages,
    set to values this recipe accepts there."""
    spelled = {format_path(path): path for path in spaces}
    choice = {spelled[name]: value for name, value in trial.choice.items() if name in spelled}
    if (len(choice) != len(spaces) or len(trial.choice) != len(spaces) or label(choice) != trial.label
            or any(value not in spaces[path] for path, value in choice.items())):  # fmt: skip
        raise UserError(f"{progress}: trial {trial.label!r} is not a candidate of this recipe's search spaces")
    data = substitute(parsed.data, choice)
    for index, chosen in trial.resolved.items():
        stage = data["stages"][int(index)] if int(index) < len(data["stages"]) else {}
        if any(stage.get(key, "auto") != "auto" for key in chosen) or not stage:
            raise UserError(f"{progress}: trial {trial.label!r} resolved keys that stage {index} of this recipe "
                            "does not leave at auto")  # fmt: skip
    try:
        validate_raw(parsed, pin_resolved(data, trial))
    except UserError as exc:
        raise UserError(f"{progress}: trial {trial.label!r} resolved values this recipe refuses: {first_line(exc)}"
                        ) from None  # fmt: skip


def _finish(claim: outputs.Claim, out: Path, data: dict[str, Any], choices: list[dict], trials: list[Trial],
            objective: str, baseline: dict[str, Any], trust: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    passing = [t for t in trials if t.status == "passed"]
    front = pareto(trials)
    picture = plots.available() and any(t.metrics for t in trials)
    by_label = {label(choice): choice for choice in choices}
    best = min(passing, key=lambda t: t.objective) if passing else min(trials, key=lambda t: t.violation)
    recipe = yaml.safe_dump(pin_resolved(substitute(data, by_label[best.label]), best), sort_keys=False).encode()
    summary = {"objective": objective, "best": best.label, "passed": bool(passing), "pareto": sorted(front),
               "trials": [asdict(t) for t in trials]}  # fmt: skip
    files = {out / ("tuned.yaml" if passing else "closest.yaml"): recipe, out / "trials.json": _json(summary),
             out / "tune.md": markdown(summary, baseline, picture).encode()}  # fmt: skip
    if picture:
        files[out / "tune.png"] = plots.tune(trials, objective, front)
    claim.write(files=files)
    if not passing:
        message = f"no candidate passes every constraint; the closest ({best.label}) is in {out}/closest.yaml"
        raise ConstraintFailed(message, summary)
    log(f"tune: best {best.label} ({objective} {best.objective:.4g}); running it into {out}/best")
    from modelshrink import recipe_run
    from modelshrink.recipe.parse import load_recipe

    torch._dynamo.reset()  # as a new process would start (see run_candidate)
    try:
        recipe_run.run(load_recipe(out / "tuned.yaml").trusting(trust), output_dir=out / "best", force=True)
    except ConstraintFailed as exc:  # the selection split flattered it: held-out data is the judge
        raise ConstraintFailed(f"{best.label} passed on the selection split, but its run fails on validation: "
                               f"{exc}", exc.report) from None  # fmt: skip
    return summary


def pin_resolved(data: dict[str, Any], trial: Trial) -> dict[str, Any]:
    """The recipe with each `auto` its trial resolved by measuring (int8 backend, compile, memory format, ...)
    set to what was chosen: timing decides those, and a close call may go the other way in the next run."""
    for index, chosen in trial.resolved.items():
        data["stages"][int(index)].update(chosen)
    return data


def _json(value: Any) -> bytes:
    """Strict JSON (an unmeasured metric's NaN as null), which `tune --resume` reads back through its schema."""
    return (escape.strict_json(value, indent=2, default=str) + "\n").encode()
