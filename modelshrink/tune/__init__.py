"""`modelshrink tune RECIPE`: search the recipe's spaces with Optuna, keep the best candidate that passes.

Every candidate a process runs shares one model, one data split and one baseline (`tune.trials`).
Candidates are judged on a selection split held out of the training data (the split training stages
choose their epochs on), never on the validation split: best/ reports validation quality that no
choice has seen, and its gates decide the exit code as in any run.

The search is an Optuna study (`tune.study`): a sampler proposes candidates (the whole grid when it fits in
`--max-trials`, else TPE, or NSGA-II for several objectives), a pruner stops a candidate that cannot win:
mid-training when it cannot pass the accuracy gate, before training when a finished candidate that passed
beats it on objectives its training cannot change (MACs, speed), and every trial is kept in a storage: by
default a journal file in the output directory, which `--resume` continues; `--storage` and `--study` let
processes on several machines share one search, `--workers N` runs N processes here (`tune.worker`). The
winner is written as tuned.yaml (a plain recipe: no search spaces left) and run once more as `modelshrink
run` would (`recipe_run`) into `best/`, once, by the worker that sees the study end
(`study.elect_finisher`); what its stages chose by timing for `auto` keys is pinned there (`pin_resolved`).
When nothing passes, the trials table and the closest candidate (closest.yaml) are still written and the
exit code is 1.
"""

from __future__ import annotations

import math
import os
import socket
import zlib
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml

from modelshrink import distributed, escape, outputs, plots
from modelshrink.constraints import gates
from modelshrink.data import build_data
from modelshrink.data.bundle import DataBundle
from modelshrink.engine import Baseline, seed_everything, start
from modelshrink.errors import ConstraintFailed, UserError, first_line
from modelshrink.export import check_extras
from modelshrink.loading import load_model
from modelshrink.progress import log
from modelshrink.recipe.parse import RawRecipe, format_path, parse_raw, read_recipe_text, validate_raw
from modelshrink.recipe.recipe import Recipe
from modelshrink.recipe.search import Path as SpacePath
from modelshrink.recipe.search import Space, check_values, combinations, find_spaces, label, substitute
from modelshrink.resume import rng_state
from modelshrink.tune import space as spacing
from modelshrink.tune import study as studies
from modelshrink.tune.report import markdown, pareto
from modelshrink.tune.trials import OBJECTIVES, Shared, Trial, export_file, read_record
from modelshrink.tune.worker import Search, spawn, wait, work

__all__ = ["OBJECTIVES", "tune"]


def tune(
    recipe_path: Path,
    out_dir: Path | None = None,
    *,
    objectives: Sequence[str] = ("latency_b1",),
    max_trials: int = 20,
    sampler: str = "auto",
    pruner: str = "hopeless",
    storage: str | None = None,
    study: str | None = None,
    workers: int = 1,
    worker: bool = False,
    resume: bool = False,
    force: bool = False,
    overrides: Sequence[str] = (),
    trust: Sequence[str] = (),
) -> dict[str, Any]:
    """Run the search, write the trials and the best (or closest) recipe; see the module docstring. Returns
    the summary (trials.json), or {"best": None, ...} from a worker that left the writing to another.
    `trust` adds modules whose factories the model's checkpoint may name, as `run --trust` does;
    `worker` is a process `--workers` started: it runs trials into the storage and writes nothing else."""
    _check_options(objectives, max_trials, sampler, pruner, workers, worker, storage, study)
    parsed = parse_raw(read_recipe_text(recipe_path), str(recipe_path), overrides)
    spaces = find_spaces(parsed)
    if not spaces:
        raise UserError(f"{recipe_path}: no search spaces ({{search: [...]}} under stages); use `modelshrink run`")
    first = check_values(parsed, spaces).trusting(trust)  # every listed value and each range's ends, up front
    _check_export_objectives(objectives, first)
    out = out_dir or first.output.dir.with_name(f"{first.output.dir.name}_tune")
    if storage is not None:
        _check_storage_file(storage, first.inputs(recipe_path), out)
    if sampler == "grid" and combinations(spaces) > studies.MAX_GRID:
        raise UserError(f"--sampler grid: the space has {combinations(spaces):,} candidates (more than "
                        f"{studies.MAX_GRID:,}); sample it (tpe, nsga2, random)")  # fmt: skip
    options = dict(objectives=list(objectives), max_trials=max_trials, sampler=sampler, pruner=pruner,
                   storage=storage, study=study or first.name, workers=workers, worker=worker, resume=resume,
                   trust=list(trust))  # fmt: skip
    if worker:  # the output directory (and its lock) belong to the process that started this one
        return _search(None, out, parsed, spaces, first, options, recipe_path, overrides)
    if force and not resume and storage is not None:
        _check_restart(storage, options["study"])
    # --resume continues (so replaces) an earlier search's directory as --force does
    with outputs.claim([outputs.search_directory(out)], first.inputs(recipe_path), force=force or resume) as claim:
        if resume and storage is None and not (out / studies.STORAGE_FILE).is_file():
            raise UserError(f"--resume: {out} holds no {studies.STORAGE_FILE} of an earlier search")
        if force and not resume:  # no earlier winner (or study) may stand beside a new search
            outputs.clear(out, SEARCH_FILES)
        return _search(claim, out, parsed, spaces, first, options, recipe_path, overrides)


def _check_options(objectives: Sequence[str], max_trials: int, sampler: str, pruner: str, workers: int,
                   worker: bool, storage: str | None, study: str | None) -> None:  # fmt: skip
    for name in objectives:
        if name.rpartition(":")[2] not in OBJECTIVES:
            raise UserError(f"--objective: {name!r} is not one of {', '.join(OBJECTIVES)}, or FILE:one of them "
                            "for an export (e.g. model.int8.xml:latency_b1)")  # fmt: skip
    if not objectives or len(set(objectives)) != len(objectives):
        raise UserError("--objective: name each objective once")
    if sampler not in studies.SAMPLERS:
        raise UserError(f"--sampler: {sampler!r} is not one of {', '.join(studies.SAMPLERS)}")
    if pruner not in studies.PRUNERS:
        raise UserError(f"--pruner: {pruner!r} is not one of {', '.join(studies.PRUNERS)}")
    if max_trials < 1 or workers < 1:
        raise UserError("--max-trials and --workers: at least 1")
    cores = os.cpu_count() or 1
    if workers > cores:  # each holds a model, data and a baseline, and needs a core of its own to train on
        raise UserError(f"--workers {workers}: this machine has {cores} cores; at most one worker each")
    if study is not None and studies.BALLOT in study:
        raise UserError(f"--study: a name holding {studies.BALLOT!r} is the tool's own (it elects a writer)")
    if worker and storage is None:
        raise UserError("--worker: a process started by --workers; it needs the --storage its parent names")


def _check_storage_file(storage: str, inputs: Sequence[tuple[str, Path]], out: Path) -> None:
    """A `--storage` file (a journal, a SQLite database) is written to: never an input, never the output
    directory or a file the search writes there (only its own study.journal), never a file that is not a
    journal already."""
    studies.check_sqlite(storage)
    path = studies.storage_file(storage, out / studies.STORAGE_FILE)
    if path is None:
        return
    for name, given in inputs:
        inside = given.is_dir() and path.resolve().is_relative_to(given.resolve())
        if inside or (given.exists() and path.exists() and path.resolve() == given.resolve()):
            raise UserError(f"--storage: {path} is or lies in the input {name}; name a storage file of its own")
    own = (out / studies.STORAGE_FILE).resolve()
    if path.resolve() != own and path.resolve().is_relative_to(out.resolve()):
        raise UserError(f"--storage: {path} is or lies in the output directory {out}, which the search writes; "
                        f"name a file elsewhere (or {studies.STORAGE_FILE} in it)")  # fmt: skip
    if "://" in storage:
        return
    if path.exists():
        if not path.is_file():
            raise UserError(f"--storage: {path} is not a file")
        with path.open("rb") as file:
            head = file.read(16)
        if head and not head.startswith(b'{"op_code"'):
            raise UserError(f"--storage: {path} is not an Optuna journal; name a new file or a journal")


def _check_restart(storage: str, name: str) -> None:
    """`--force` starts a search over in its output directory, but a study in a `--storage` that other
    workers may share is never deleted: refused before anything is cleared."""
    if studies.holds_anything(storage, Path()) and studies.has_study(studies.open_storage(storage, Path()), name):
        raise UserError(f"--force: --storage already holds study {name!r}, which is not deleted (other workers "
                        "may share it); name a new --study, or --resume it")  # fmt: skip


def _check_export_objectives(objectives: Sequence[str], recipe: Recipe) -> None:
    """An objective on an export names a file the recipe's `export:` writes, with its extra installed."""
    files = {spec.file_name: spec for spec in recipe.export}
    for name in objectives:
        wanted = export_file(name)
        if wanted is not None and wanted not in files:
            known = ", ".join(files) or "none: the recipe has no export section"
            raise UserError(f"--objective {name}: no export writes {wanted} (the recipe's exports: {known})")
    check_extras([files[export_file(name)] for name in objectives if export_file(name) is not None])


# what a search writes; `tune --force` clears them all before it starts
SEARCH_FILES = ("trials.json", "tuned.yaml", "closest.yaml", "tune.md", "tune.png", "best", studies.STORAGE_FILE)


def _search(claim: outputs.Claim | None, out: Path, parsed: RawRecipe, spaces: dict[SpacePath, Space], first: Recipe,
            options: dict[str, Any], recipe_path: Path, overrides: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    objectives, max_trials = options["objectives"], options["max_trials"]
    total = combinations(spaces)
    study, journal, storage = None, out / studies.STORAGE_FILE, None
    if options["storage"] is not None or options["resume"] or options["worker"]:  # an earlier study: checked first
        if studies.holds_anything(options["storage"], journal):
            storage = studies.open_storage(options["storage"], journal)
            if options["resume"] or options["worker"] or studies.has_study(storage, options["study"]):
                study = _study(storage, parsed, spaces, first, options, total)
                _collect(study, parsed, spaces)
        elif options["resume"]:
            raise UserError(f"--resume: {options['storage'] or journal} holds no earlier search")
    log(f"tune: {min(max_trials, total):,} of {total:,} candidates over {len(spaces)} search "
        f"space{'' if len(spaces) == 1 else 's'}, objective{'s' if len(objectives) > 1 else ''} "
        f"{', '.join(objectives)}")  # fmt: skip
    # as `run` does, in its order, so that a candidate's stages see the random state a run of it would
    seed_everything(first.seed)
    selection = _selection_data(first)
    model, lineage = load_model(first.model)
    baseline = start(model, lineage, selection, first.evaluate, first.stages, [first.constraints])
    assert baseline.metrics is not None
    if "accuracy_drop" in objectives and not math.isfinite(baseline.metrics.get("accuracy", math.nan)):
        raise UserError("--objective accuracy_drop: the data has no class labels to measure accuracy on")
    shared = Shared(baseline, selection, rng_state(selection.train.generator))
    if study is None:  # a new study: its directory (and storage file) appear once model and data load
        if claim is not None and not out.is_dir():
            claim.write(directories={out: {}})
        storage = storage or studies.open_storage(options["storage"], journal)
        study = _study(storage, parsed, spaces, first, options, total)
    if isinstance(study.pruner, studies.HopelessPruner):
        study.pruner.limit = accuracy_limit(first, baseline)
        if study.pruner.limit is None:
            log("tune: no accuracy gate to prune against (constraints: min_accuracy or max_accuracy_drop); "
                "no candidate is stopped for its accuracy")  # fmt: skip
    search = Search(parsed, spaces, objectives, max_trials, study, study.pruner, options["trust"])
    workers = options["workers"]
    threads = max(1, distributed.DEFAULT_THREADS // workers)
    children = spawn(min(workers, max_trials) - 1, _worker_argv(recipe_path, out, options, overrides), threads)
    try:
        with distributed.sharing_threads(threads):
            ran = work(search, shared)
    finally:
        wait(children)
    with distributed.sharing_threads(threads):
        # a worker that died while this one ran out of candidates leaves its candidate to this one
        while studies.Reaper().reap(study):
            ran += work(search, shared)
    if options["worker"]:
        return {"best": None, "ran": ran}
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    if running:
        log(f"tune: this worker ran {_candidates(ran)}; {len(running)} still run elsewhere, and the worker that "
            "finishes the last one writes the winner")  # fmt: skip
        return {"best": None, "ran": ran}
    if not options["resume"] and not studies.elect_finisher(storage, study):
        log(f"tune: this worker ran {_candidates(ran)}; another worker of study {study.study_name} writes the winner")
        return {"best": None, "ran": ran}
    assert claim is not None
    trials = _collect(study, parsed, spaces)
    return _finish(claim, out, parsed.data, spaces, trials, objectives, baseline.metrics, options)


def _study(storage: optuna.storages.BaseStorage, parsed: RawRecipe, spaces: dict[SpacePath, Space], first: Recipe,
           options: dict[str, Any], total: int) -> optuna.Study:  # fmt: skip
    objectives, max_trials = options["objectives"], options["max_trials"]
    grid = spacing.grid(spaces) if total <= studies.MAX_GRID else None
    own_seed = first.seed
    if options["worker"] or options["storage"] is not None:  # each process of a shared search draws its own
        own_seed = zlib.crc32(f"{first.seed}:{socket.gethostname()}:{os.getpid()}".encode())
    sampler = studies.make_sampler(options["sampler"], len(objectives), grid, total <= max_trials, max_trials,
                                   first.seed, own_seed)  # fmt: skip
    pruner = studies.make_pruner(options["pruner"], objectives)
    print_ = studies.fingerprint(parsed.data, objectives)
    study = studies.open_study(storage, options["study"], print_, objectives, sampler, pruner,
                               options["resume"])  # fmt: skip
    studies.check_trials(study, spacing.distributions(spaces))
    studies.stamp(study, print_, objectives)
    return study


def _candidates(count: int) -> str:
    return f"{count} candidate{'' if count == 1 else 's'}"


def accuracy_limit(recipe: Recipe, baseline: Baseline) -> float | None:
    """The strictest accuracy limit the recipe's gates set (against this baseline): what the pruner aims at."""
    assert baseline.metrics is not None
    limits = [gate.lowest_passing(baseline.metrics) for gate in gates(recipe.constraints)
              if gate.metric.name == "accuracy"]  # fmt: skip
    known = [limit for limit in limits if limit is not None and math.isfinite(limit)]
    return max(known) if known else None


def _worker_argv(recipe_path: Path, out: Path, options: dict[str, Any], overrides: Sequence[str]) -> list[str]:
    """The command line of a local worker: the same search, on the storage this process opened."""
    where = options["storage"] or str((out / studies.STORAGE_FILE).resolve())
    argv = [str(recipe_path), "-o", str(out), "--storage", where, "--study", options["study"],
            "--max-trials", str(options["max_trials"]), "--sampler", options["sampler"], "--pruner", options["pruner"]]
    for name in options["objectives"]:
        argv += ["--objective", name]
    for override in overrides:
        argv += ["--set", override]
    for module in options["trust"]:
        argv += ["--trust", module]
    return argv


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


def _collect(study: optuna.Study, parsed: RawRecipe, spaces: dict[SpacePath, Space]) -> list[Trial]:
    """Every candidate the study ran, in trial order, each record checked against this recipe (a storage
    is someone's file, and what a record says it resolved is pasted into tuned.yaml, which is then run)."""
    trials = []
    for frozen in study.get_trials(deepcopy=False):
        if "label" not in frozen.user_attrs or "skipped" in frozen.user_attrs:
            continue
        where = f"study {study.study_name}, trial {frozen.number}"
        choice = spacing.choice_of(spaces, frozen.params)
        if choice is None:
            raise UserError(f"{where}: its parameters are not a candidate of this recipe's search spaces")
        name = label(choice)
        if "record" not in frozen.user_attrs:
            if frozen.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
                raise UserError(f"{where}: it finished without a record of modelshrink tune")
            if frozen.state == optuna.trial.TrialState.FAIL:
                spelled = {format_path(path): value for path, value in choice.items()}
                trials.append(Trial(name, spelled, "lost", note=frozen.user_attrs.get("lost", "interrupted")))
            continue
        try:
            trial = read_record(frozen.user_attrs["record"])
        except ValueError as exc:
            raise UserError(f"{where}: not a record of modelshrink tune: {first_line(exc)}") from None
        if trial.label != name or trial.choice != {format_path(path): value for path, value in choice.items()}:
            raise UserError(f"{where}: its record names another candidate than its parameters")
        _check_resolved(where, trial, parsed, choice)
        trials.append(trial)
    return trials


def _check_resolved(where: str, trial: Trial, parsed: RawRecipe, choice: dict[SpacePath, Any]) -> None:
    """What a record says its stages resolved (pasted into tuned.yaml, which is then run) may name only `auto`
    keys of those stages, set to values this recipe accepts there."""
    data = substitute(parsed.data, choice)
    for index, chosen in trial.resolved.items():
        stage = data["stages"][int(index)] if int(index) < len(data["stages"]) else {}
        if any(stage.get(key, "auto") != "auto" for key in chosen) or not stage:
            raise UserError(f"{where}: trial {trial.label!r} resolved keys that stage {index} of this recipe "
                            "does not leave at auto")  # fmt: skip
    try:
        validate_raw(parsed, pin_resolved(data, trial))
    except UserError as exc:
        raise UserError(f"{where}: trial {trial.label!r} resolved values this recipe refuses: {first_line(exc)}"
                        ) from None  # fmt: skip


def _finish(claim: outputs.Claim, out: Path, data: dict[str, Any], spaces: dict[SpacePath, Space],
            trials: list[Trial], objectives: list[str], baseline: dict[str, Any], options: dict[str, Any]
            ) -> dict[str, Any]:  # fmt: skip
    passing = [t for t in trials if t.status == "passed"]
    front = pareto(trials, multi=len(objectives) > 1)
    picture = plots.available() and any(t.metrics for t in trials)
    if passing:
        chosen = [t for t in passing if t.label in front] or passing
        best = min(chosen, key=lambda t: t.values or [math.inf])
    else:
        best = min(trials, key=lambda t: t.violation) if trials else None
    if best is None:
        raise UserError(f"tune: study {options['study']} holds no candidate that ran")
    choice = {path: value for path in spaces for name, value in best.choice.items() if name == format_path(path)}
    recipe = yaml.safe_dump(pin_resolved(substitute(data, choice), best), sort_keys=False).encode()
    summary = {"objective": objectives[0], "objectives": objectives, "best": best.label, "passed": bool(passing),
               "pareto": sorted(front), "study": options["study"], "trials": [asdict(t) for t in trials]}  # fmt: skip
    files = {out / ("tuned.yaml" if passing else "closest.yaml"): recipe, out / "trials.json": _json(summary),
             out / "tune.md": markdown(summary, baseline, picture).encode()}  # fmt: skip
    if picture:
        files[out / "tune.png"] = plots.tune(trials, objectives[0], front)
    claim.write(files=files)
    if not passing:
        message = f"no candidate passes every constraint; the closest ({best.label}) is in {out}/closest.yaml"
        raise ConstraintFailed(message, summary)
    shown = ", ".join(f"{name} {value:.4g}" for name, value in zip(objectives, best.values or [], strict=False))
    log(f"tune: best {best.label} ({shown}); running it into {out}/best")
    from modelshrink import recipe_run
    from modelshrink.recipe.parse import load_recipe

    torch._dynamo.reset()  # as a new process would start (see run_candidate)
    try:
        recipe_run.run(load_recipe(out / "tuned.yaml").trusting(options["trust"]), output_dir=out / "best",
                       force=True)  # fmt: skip
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
    """Strict JSON (an unmeasured metric's NaN as null): what other tools read."""
    return (escape.strict_json(value, indent=2, default=str) + "\n").encode()
