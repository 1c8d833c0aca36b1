"""`modelshrink tune RECIPE`: try the recipe's search spaces, keep the best candidate that passes.

Every candidate shares one model, one data split and one baseline (`tune.trials`). Candidates are
judged on a selection split held out of the training data (the split training stages choose their
epochs on), never on the validation split: best/ reports validation quality that no choice has seen,
and its gates decide the exit code as in any run. Trials are saved
to trials.json as they finish, so `--resume` continues an interrupted search. The winner is written
as tuned.yaml (a plain recipe: no search spaces left) and run once more through the normal pipeline
into `best/`, so its checkpoint and reports are exactly what `modelshrink run tuned.yaml` makes; what its
stages chose by timing for `auto` keys is pinned there (`pin_resolved`).
When nothing passes, the trials table and the closest candidate (closest.yaml) are still written and
the exit code is 1: a search never ends with nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from modelshrink import plots
from modelshrink.atomic import write_file
from modelshrink.data import build_data
from modelshrink.data.bundle import DataBundle
from modelshrink.engine import measure_model, seed_everything
from modelshrink.errors import ConstraintFailed, UserError, first_line
from modelshrink.loading import load_model
from modelshrink.progress import log
from modelshrink.recipe.load import format_path, parse_raw, read_recipe_text, validate_raw
from modelshrink.recipe.recipe import Recipe
from modelshrink.recipe.search import candidates, find_spaces, first_values, label, substitute
from modelshrink.resume import rng_state
from modelshrink.tune.report import markdown, pareto
from modelshrink.tune.trials import OBJECTIVES, Shared, Trial, run_candidate

__all__ = ["OBJECTIVES", "tune"]


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
    done = _earlier_trials(out, resume, force)
    log(f"tune: {len(choices)} candidates over {len(spaces)} search spaces, objective {objective}")
    # as `run` does, in its order, so that a candidate's stages see the random state a run of it would
    seed_everything(first.seed)
    selection = _selection_data(first)
    model, lineage = load_model(first.model)
    baseline, reference = measure_model(model.eval(), lineage, selection, first.evaluate)
    out.mkdir(parents=True, exist_ok=True)  # only now: a model or data that cannot load leaves nothing behind
    if not resume:
        (out / "trials.json").unlink(missing_ok=True)
    shared = Shared(model, lineage, selection, baseline, reference, rng_state(selection.train.generator))
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
        write_file(out / "trials.json", _json({"objective": objective, "trials": [asdict(t) for t in trials]}))
    return _finish(out, parsed.data, choices, trials, objective, baseline, trust)


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


def _earlier_trials(out: Path, resume: bool, force: bool) -> dict[str, Trial]:
    """The trials an interrupted search already finished (with --resume); refuse to overwrite otherwise."""
    progress = out / "trials.json"
    if resume:
        if not progress.exists():
            raise UserError(f"--resume: {out} holds no trials.json of an earlier search")
        saved = json.loads(progress.read_text())["trials"]
        return {t["label"]: Trial(**t) for t in saved}
    if out.exists() and not (force and progress.exists()):
        hint = "pass --resume to continue it, or --force to start over" if progress.exists() else "choose a new one"
        raise UserError(f"--output: {out} already exists; {hint}")
    return {}


def _finish(out: Path, data: dict[str, Any], choices: list[dict], trials: list[Trial], objective: str,
            baseline: dict[str, Any], trust: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    passing = [t for t in trials if t.status == "passed"]
    front = pareto(trials)
    picture = plots.available() and any(t.metrics for t in trials)
    if picture:
        write_file(out / "tune.png", plots.tune(trials, objective, front))
    by_label = {label(choice): choice for choice in choices}
    best = min(passing, key=lambda t: t.objective) if passing else min(trials, key=lambda t: t.violation)
    recipe = yaml.safe_dump(pin_resolved(substitute(data, by_label[best.label]), best), sort_keys=False).encode()
    write_file(out / ("tuned.yaml" if passing else "closest.yaml"), recipe)
    summary = {"objective": objective, "best": best.label, "passed": bool(passing), "pareto": sorted(front),
               "trials": [asdict(t) for t in trials]}  # fmt: skip
    write_file(out / "trials.json", _json(summary))
    write_file(out / "tune.md", markdown(summary, baseline, picture).encode())
    if not passing:
        message = f"no candidate passes every constraint; the closest ({best.label}) is in {out}/closest.yaml"
        raise ConstraintFailed(message, summary)
    log(f"tune: best {best.label} ({objective} {best.objective:.4g}); running it into {out}/best")
    from modelshrink import pipeline
    from modelshrink.recipe.load import load_recipe

    torch._dynamo.reset()  # as a new process would start (see run_candidate)
    try:
        pipeline.run(load_recipe(out / "tuned.yaml").trusting(trust), output_dir=out / "best", force=True)
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
    return (json.dumps(value, indent=2, default=str) + "\n").encode()
