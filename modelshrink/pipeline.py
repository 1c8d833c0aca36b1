"""Run a recipe: load model and data, measure the baseline, apply and measure each stage, gate, write.

Its outputs (the directory, a --junit file) are claimed before any work and written all at once at the
end through `outputs`, so a failed run leaves no output and an existing output is never half-replaced.
Progress (the model after each stage, the training state after each epoch) goes to a resume directory
beside the output, so that `resume=True` continues an interrupted run; it is removed when the run ends
or a user error stops it. In a multi-process run every rank trains, and rank 0 alone measures and writes.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelshrink import compiled_artifact, distributed, outputs
from modelshrink.checkpoint import from_bytes, to_bytes
from modelshrink.compare import read_report, regression_metrics, regressions
from modelshrink.compiled import Compiled
from modelshrink.compiled_artifact import artifact_name
from modelshrink.constraints import check_constraints, check_gated_metrics_exist, failures
from modelshrink.data import DataBundle, build_data
from modelshrink.engine import measure_model, run_stage, seed_everything
from modelshrink.errors import ConstraintFailed, UserError, first_line
from modelshrink.export import check_extras
from modelshrink.export.measure import export_all
from modelshrink.inputs import batch_size, call, describe, logits, output_matrix
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
) -> dict[str, Any] | None:
    """Returns the report (None on ranks other than 0 of a multi-process run). `junit`: a file for the gates
    as JUnit XML, claimed with the output directory before any work and written after it. Libraries'
    warnings become findings, one per distinct warning (`quiet.collected`); `verbose` shows them too (None:
    as the enclosing command says)."""
    distributed.init_from_env()
    main = distributed.is_main()
    out_dir = Path(output_dir) if output_dir is not None else recipe.output.dir
    targets = [outputs.run_directory(out_dir), *([outputs.junit_file(junit)] if junit else [])]
    with outputs.claim(targets, recipe.inputs(recipe_source), force=force) if main else nullcontext() as claim:
        return _run_locked(recipe, out_dir, force, resume, recipe_source, main, claim, junit, verbose)


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
) -> dict[str, Any] | None:
    check_extras(recipe.export)
    previous = read_report(recipe.constraints.compare_to) if recipe.constraints.compare_to else None
    if previous is not None:
        regression_metrics(recipe.constraints, previous)
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
            report, exported = _run_stages(recipe, data, store, resume, main, recipe_source, previous, notices)
        if claim is not None:
            blob = store.model_blob(len(report["stages"]))
            _write_outputs(claim, out_dir, recipe, report, blob, exported, force, junit)
    except Exception:
        # bad input or a bug of ours: nothing worth resuming, nothing left behind. An interrupt
        # (KeyboardInterrupt, a kill) is not an Exception and keeps the state for --resume.
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
    previous: dict[str, Any] | None,
    notices: Notices,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The engine's two steps (measure the baseline, run each stage), saved after each for --resume, then
    the exports; returns the report and the exported files."""
    saved = store.start(resume)
    distributed.barrier()
    if saved is None:
        model, lineage = load_model(recipe.model)
        model.eval()
        check_model_fits_data(model, data, recipe)
        baseline, reference = measure_model(model, lineage, data, recipe.evaluate) if main else (None, None)
        if baseline is not None:
            for constraints in [recipe.constraints, *(e.constraints for e in recipe.export if e.constraints)]:
                check_gated_metrics_exist(constraints, baseline)
        progress: dict[str, Any] = {"baseline": baseline, "results": []}
        store.save_stage(0, to_bytes(model, lineage, data.input_shape), progress, data.train.generator)
        completed, original = 0, copy.deepcopy(model)
    else:
        progress, completed = saved["progress"], saved["completed"]
        with store.reading(completed):
            model, lineage = from_bytes(store.model_blob(completed), recipe.model.allow_pickle, recipe.model.trusted)
        with store.reading(0):
            original, _ = from_bytes(store.model_blob(0), recipe.model.allow_pickle, recipe.model.trusted)
        restore_rng(saved["rng"], data.train.generator)
        reference = reference_outputs(original, data, recipe.evaluate) if main else None
    ctx = StageContext(
        data=data,
        original_model=original,
        lineage=lineage,
        evaluate=recipe.evaluate,
        seed=recipe.seed,
        resume_store=store,
        load_model=load_model,
    )
    results: list[dict[str, Any]] = progress["results"]
    for index, (spec, name) in enumerate(zip(recipe.stages, recipe.stage_names(), strict=True), start=1):
        if index <= completed:
            continue
        before = results[-1]["metrics"] if results else progress["baseline"]
        model, result = run_stage(model, spec, name, ctx, reference, before)
        results.append(result.to_json())
        store.save_stage(index, to_bytes(model, lineage, data.input_shape), progress, data.train.generator)
    if not main:
        return {}, {}
    # earlier stages' models come back from their saved checkpoints; the last one is still in memory
    pickled, trusted = recipe.model.allow_pickle, recipe.model.trusted
    snapshots = [from_bytes(store.model_blob(i), pickled, trusted)[0] for i in range(len(results))]
    snapshots.append(model)
    baseline = progress["baseline"]
    measured = [baseline] + [r["metrics"] for r in results]
    exports = export_all(recipe, snapshots, measured, data, reference) if recipe.export else []
    timed = [*snapshots, *(e.exported.runtime for e in exports)]
    log(f"timing {len(timed)} models side by side")
    add_latencies(timed, [*measured, *(e.metrics for e in exports)], data, recipe.evaluate)
    final_blob = store.model_blob(len(results))
    reusable, packaging = compiled_package(model, data, recipe.output.checkpoint_name, final_blob)
    final = results[-1]["metrics"] if results else baseline
    report = build_report(
        recipe=recipe.model_dump(mode="json"),
        recipe_source=recipe_source,
        baseline=baseline,
        stages=results,
        constraints=[
            *check_constraints(recipe.constraints, baseline, final),
            *(regressions(recipe.constraints, previous, final) if previous else []),
            *(result for e in exports for result in e.check_constraints(baseline)),
        ],
        checkpoint=recipe.output.checkpoint_name,
        compared_to=(str(recipe.constraints.compare_to), previous) if previous else None,
        layers=layer_summary(model),
        custom_metrics=directions(recipe.evaluate.metrics, baseline.get("custom", {})),
        exports=[e.to_json() for e in exports],
        library_warnings=notices.take(),
    )
    report["findings"] += packaging
    return report, {**{name: content for e in exports for name, content in e.exported.files.items()}, **reusable}


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


def check_model_fits_data(model: nn.Module, data: DataBundle, recipe: Recipe) -> None:
    """Run the model once on the data's inputs, before any work, so a mismatch is one line, not a
    traceback deep inside a stage."""
    inputs = data.example_inputs(2)
    try:
        with torch.inference_mode():
            raw = call(model, inputs)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:  # IndexError: token ids beyond the vocabulary
        first = first_line(exc)
        raise UserError(f"model does not accept inputs {describe(inputs)} from data: {first}") from None
    try:
        out = output_matrix(raw)
    except ValueError as exc:
        raise UserError(f"model output: {exc}") from None
    if out.shape[0] != batch_size(inputs):
        raise UserError(f"model output {describe(raw)} does not have the batch of {batch_size(inputs)} in front")
    if not (data.labeled and data.class_targets):  # judged against the original model: any output will do
        return
    if logits(raw) is None:
        raise UserError(f"model output {describe(raw)} is not (batch, classes) logits, but the data has classes")
    if any(spec.replaces_head for spec in recipe.stages):
        return
    if not data.exact_classes and out.shape[1] < data.num_classes:
        raise UserError(f"model outputs {out.shape[1]} classes but the data has class index {data.num_classes - 1}")
    if data.exact_classes and out.shape[1] != data.num_classes:
        raise UserError(
            f"model outputs {out.shape[1]} classes but the data has {data.num_classes}; set model.num_classes: "
            f"{data.num_classes}, or replace the classifier with a finetune stage's num_classes"
        )
