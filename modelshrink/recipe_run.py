"""A recipe run that writes files: the engine's stage loop (`engine.run_stages`) with what a command-line
run adds around it: outputs claimed before any work, resumable progress, exports, gates and the reports.

Its outputs (the directory, a --junit file) are claimed before any work and written all at once at the
end through `outputs`, so a failed run leaves no output and an existing output is never half-replaced.
Progress (the model after each stage, the training state after each epoch) goes to a resume directory
beside the output, so that `resume=True` continues an interrupted run; it is removed when the run ends
or a user error stops it. In a multi-process run every rank trains, and rank 0 alone measures and writes.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from modelshrink import compiled_artifact, distributed, outputs
from modelshrink.checkpoint import from_bytes, to_bytes
from modelshrink.compare import read_report, regression_metrics, regressions
from modelshrink.compiled import Compiled
from modelshrink.compiled_artifact import artifact_name
from modelshrink.constraints import check_constraints, failures
from modelshrink.data import DataBundle, build_data
from modelshrink.descriptors import Metrics
from modelshrink.engine import Baseline, Progress, StageHooks, StageResult, run_stages, seed_everything, start
from modelshrink.errors import ConstraintFailed, UserError, first_line
from modelshrink.export import check_extras
from modelshrink.export.measure import export_all
from modelshrink.junit import junit_xml
from modelshrink.loading import load_model
from modelshrink.metrics import add_latencies, reference_outputs
from modelshrink.metrics.custom import directions
from modelshrink.metrics.size import layer_summary
from modelshrink.progress import log
from modelshrink.quiet import Notices, collected
from modelshrink.recipe.recipe import Recipe
from modelshrink.report import build_report
from modelshrink.report_files import check_html_available, report_files
from modelshrink.resume import ResumeStore, restore_rng
from modelshrink.stages import StageContext


def run(
    recipe: Recipe,
    *,
    output_dir: Path | None = None,
    force: bool = False,
    resume: bool = False,
    recipe_source: str | None = None,
    junit: Path | None = None,
    verbose: bool | None = None,
    compare_to: Path | None = None,
) -> dict[str, Any] | None:
    """Returns the report (None on ranks other than 0 of a multi-process run). `compare_to`: an earlier
    report.json to gate regressions against, in place of the recipe's `constraints.compare_to`. `junit`:
    a file for the gates as JUnit XML, claimed with the output directory before any work and written after
    it. Libraries' warnings become findings, one per distinct warning (`quiet.collected`); `verbose` shows
    them too (None: as the enclosing command says)."""
    distributed.init_from_env()
    main = distributed.is_main()
    out_dir = Path(output_dir) if output_dir is not None else recipe.output.dir
    compare_to = compared_report(recipe, compare_to)
    previous = read_report(compare_to) if compare_to else None  # one line naming a bad file, before any work
    targets = [outputs.run_directory(out_dir), *([outputs.junit_file(junit)] if junit else [])]
    inputs = [*recipe.inputs(recipe_source), *([("report compared to", compare_to)] if compare_to else [])]
    with outputs.claim(targets, inputs, force=force) if main else nullcontext() as claim:
        compared = (str(compare_to), previous) if compare_to and previous is not None else None
        return _run_locked(recipe, out_dir, force, resume, recipe_source, main, claim, junit, verbose, compared)


def compared_report(recipe: Recipe, compare_to: Path | None) -> Path | None:
    """The earlier report this run gates regressions against: `--compare-to`, else the recipe's own; a
    tolerance without a report, or a report without one, is refused before any work."""
    compare_to = compare_to or recipe.constraints.compare_to
    if compare_to is None and recipe.constraints.max_regression:
        raise UserError("constraints.max_regression: no report to compare with; set constraints.compare_to "
                        "or pass --compare-to REPORT")  # fmt: skip
    if compare_to is not None and not recipe.constraints.max_regression:
        raise UserError(f"--compare-to {compare_to}: the recipe says no constraints.max_regression, how much "
                        "worse than that report may pass (e.g. {accuracy: 0.01, latency_b1_ms: 1.10})")  # fmt: skip
    return compare_to


def _run_locked(
    recipe: Recipe,
    out_dir: Path,
    force: bool,
    resume: bool,
    recipe_source: str | None,
    main: bool,
    claim: outputs.Claim | None,
    junit: Path | None,
    verbose: bool | None,
    compared: tuple[str, dict[str, Any]] | None,
) -> dict[str, Any] | None:
    check_extras(recipe.export)
    if compared is not None:
        regression_metrics(recipe.constraints, compared[1])
    if recipe.output.html:
        check_html_available()
    seed_everything(recipe.seed)
    data = build_data(
        recipe.data,
        recipe.seed,
        recipe.model,
        tuning_split=recipe.needs_tuning_split,
        evaluation=recipe.evaluate.data,
    )
    store = ResumeStore(out_dir, recipe.model_dump(mode="json"))
    try:
        with collected(show=verbose) as notices:
            report, exported = _run_stages(recipe, data, store, resume, main, recipe_source, compared, notices)
        if claim is not None:
            blob = store.model_blob(len(report["stages"]))
            _write_outputs(claim, out_dir, recipe, report, blob, exported, force, junit)
    except Exception as exc:
        # bad input or a bug of ours: nothing worth resuming, nothing left behind. An interrupt
        # (KeyboardInterrupt, a kill, another rank dying) is not one and keeps the state for --resume.
        if distributed.lost_peer(exc):
            raise distributed.PeerLost(f"another process of this run stopped ({first_line(exc)})") from None
        store.finish()
        raise
    store.finish()
    distributed.barrier()
    if not main:
        return None
    if not report["passed"]:
        raise ConstraintFailed(f"constraint failed: {failures(report['constraints'])}; reports in {out_dir}", report)
    return report


def _run_stages(
    recipe: Recipe,
    data: DataBundle,
    store: ResumeStore,
    resume: bool,
    main: bool,
    recipe_source: str | None,
    compared: tuple[str, dict[str, Any]] | None,
    notices: Notices,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The engine's stage loop, each stage saved for --resume (`_SaveEachStage`), then the exports and the
    side-by-side timing; returns the report and the exported files."""
    baseline, done, completed = _start_or_resume(recipe, data, store, resume, main)
    ctx = StageContext(
        data=data, original_model=baseline.model, lineage=done.lineage, evaluate=recipe.evaluate, seed=recipe.seed,
        resume_store=store, load_model=load_model,
    )  # fmt: skip
    saving = _SaveEachStage(store, data, baseline.metrics)
    done = run_stages(done, recipe.stages, ctx, baseline, saving, first=completed)
    if not main:
        return {}, {}
    assert baseline.metrics is not None and baseline.reference is not None
    # earlier stages' models come back from their saved checkpoints; the last one is still in memory
    pickled, trusted = recipe.model.allow_pickle, recipe.model.trusted
    snapshots = [from_bytes(store.model_blob(i), pickled, trusted)[0] for i in range(len(done.results))]
    snapshots.append(done.model)
    measured = [baseline.metrics] + [r.metrics for r in done.results]
    exports = export_all(recipe, snapshots, measured, data, baseline.reference) if recipe.export else []
    timed = [*snapshots, *(e.exported.runtime for e in exports)]
    log(f"timing {len(timed)} models side by side")
    add_latencies(timed, [*measured, *(e.metrics for e in exports)], data, recipe.evaluate)
    final_blob = store.model_blob(len(done.results))
    reusable, packaging = compiled_package(done.model, data, recipe.output.checkpoint_name, final_blob)
    final = done.latest(baseline.metrics)
    assert final is not None
    previous = compared[1] if compared else None
    report = build_report(
        recipe=recipe.model_dump(mode="json"),
        recipe_source=recipe_source,
        baseline=baseline.metrics,
        stages=done.results,
        constraints=[
            *check_constraints(recipe.constraints, baseline.metrics, final),
            *(regressions(recipe.constraints, previous, final) if previous else []),
            *(result for e in exports for result in e.check_constraints(baseline.metrics)),
        ],
        checkpoint=recipe.output.checkpoint_name,
        compared_to=compared,
        layers=layer_summary(done.model),
        custom_metrics=directions(recipe.evaluate.metrics, baseline.metrics.get("custom", {})),
        exports=[e.to_json() for e in exports],
        library_warnings=notices.take(),
    )
    report["findings"] += packaging
    return report, {**{name: content for e in exports for name, content in e.exported.files.items()}, **reusable}


def _start_or_resume(
    recipe: Recipe, data: DataBundle, store: ResumeStore, resume: bool, main: bool
) -> tuple[Baseline, Progress, int]:
    """The baseline and the progress to go on from: a new start (the baseline saved as step 0), or an
    interrupted run's saved steps; and how many stages are done."""
    saved = store.start(resume)
    distributed.barrier()
    if saved is None:
        model, lineage = load_model(recipe.model)
        gated = [recipe.constraints, *(e.constraints for e in recipe.export if e.constraints)]
        baseline = start(model, lineage, data, recipe.evaluate, recipe.stages, gated, measure=main)
        store.save_stage(0, to_bytes(model, lineage, data.input_shape), _progress(baseline.metrics, []),
                         data.train.generator)  # fmt: skip
        return replace(baseline, model=copy.deepcopy(model)), Progress(model, lineage), 0
    completed = saved["completed"]
    pickled, trusted = recipe.model.allow_pickle, recipe.model.trusted
    with store.reading(completed):
        model, lineage = from_bytes(store.shared_model_blob(completed), pickled, trusted)
        results = [StageResult.from_json(result) for result in saved["progress"]["results"]]
    with store.reading(0):
        original, original_lineage = from_bytes(store.shared_model_blob(0), pickled, trusted)
    restore_rng(saved["rng"], data.train.generator)
    reference = reference_outputs(original, data, recipe.evaluate) if main else None
    baseline = Baseline(original, original_lineage, saved["progress"]["baseline"], reference)
    return baseline, Progress(model, lineage, results), completed


def _progress(baseline: Metrics | None, results: list[StageResult]) -> dict[str, Any]:
    """What the resume state keeps besides the models: plain types only (`resume.ResumeStore`)."""
    return {"baseline": baseline, "results": [result.to_json() for result in results]}


class _SaveEachStage(StageHooks):
    """After each stage: its model, the results so far and the random state, for --resume."""

    def __init__(self, store: ResumeStore, data: DataBundle, baseline: Metrics | None):
        self.store, self.data, self.baseline = store, data, baseline

    def after(self, index: int, progress: Progress) -> bool:
        blob = to_bytes(progress.model, progress.lineage, self.data.input_shape)
        self.store.save_stage(index + 1, blob, _progress(self.baseline, progress.results), self.data.train.generator)
        return True


def compiled_package(
    model: nn.Module, data: DataBundle, checkpoint_name: str, checkpoint: bytes
) -> tuple[dict[str, bytes], list[str]]:
    """A compiled final model's AOTInductor package, written beside the checkpoint so that reloads on this
    machine run it instead of compiling (`compiled_artifact`); the findings say what it took, or why not."""
    if not isinstance(model, Compiled):
        return {}, []
    name = artifact_name(checkpoint_name)
    log(f"packaging the compiled model for reloads ({name})")
    try:
        blob, seconds = compiled_artifact.package(model, data.example_inputs(2))
    except UserError as exc:
        return {}, [f"{name} not written, reloads compile on their first call: {first_line(exc)}"]
    unrecorded = compiled_artifact.record(blob, checkpoint)
    if unrecorded is not None:
        return {}, [f"{name} not written, reloads compile on their first call: it could not be recorded ({unrecorded})"]
    return {name: blob}, [
        f"{name}: the compiled model packaged with AOTInductor in {seconds:.1f} s (apart from every latency); "
        "modelshrink.load runs it on this machine, with this torch, instead of compiling again"
    ]


def _write_outputs(
    claim: outputs.Claim,
    out_dir: Path,
    recipe: Recipe,
    report: dict[str, Any],
    blob: bytes,
    exported: dict[str, bytes],
    force: bool,
    junit: Path | None,
) -> None:
    """The directory and the --junit file together (`Claim.write`): both or neither."""
    files = {recipe.output.checkpoint_name: blob, **exported, **report_files(report, html=recipe.output.html)}
    claim.write({out_dir: files}, {junit: junit_xml(report)} if junit else {}, replace=force)
    log(f"wrote {out_dir}/ ({', '.join(files)})")
