"""The in-memory engine: the one stage loop every command runs, and `compress`, its whole use on a
model, a stage list and data held in memory.

Every caller goes through the same three steps: `start` (the checks a model and its data must pass
before any work, then the baseline's measurements), `run_stages` (apply and measure each stage) and
`add_latencies` (time the models side by side). What differs between callers is what happens around a
stage, given as `StageHooks`: the file-writing run (`recipe_run`) saves each stage for `--resume`,
`tune` reuses the stages candidates share and drops a candidate that can no longer pass, `analyze`
trains as the recipe's first stages do. `compress` writes no files and restores the global state it
touches (random generators, torch's thread count).
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from pydantic import TypeAdapter
from torch import nn

from modelshrink.checkpoint import to_bytes
from modelshrink.constraints import check_gated_metrics_exist
from modelshrink.data import DataBundle, build_data
from modelshrink.descriptors import Metrics, human_bytes
from modelshrink.diagnose import failing_layer
from modelshrink.errors import UserError, first_line
from modelshrink.inputs import batch_size, call, describe, logits, output_matrix
from modelshrink.lineage import Lineage
from modelshrink.loading import load_model
from modelshrink.metrics import Reference, add_latencies, measure
from modelshrink.progress import log
from modelshrink.recipe.schema import DataSpec, EvaluateSpec, ModelSpec
from modelshrink.recipe.stage_specs import BaseStageSpec, needs_tuning_split, parse_stage, stage_names
from modelshrink.stages import StageContext, apply_stage
from modelshrink.stages.notes import StageNotes


@dataclass
class StageResult:
    """One stage's outcome; report.json's `stages[]` holds `to_json()` of each."""

    name: str
    kind: str
    params: dict[str, Any]
    metrics: Metrics | None  # None on ranks other than 0 of a multi-process run
    duration_s: float
    notes: StageNotes = field(default_factory=StageNotes)

    def to_json(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "notes": self.notes.to_json()}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> StageResult:
        """Back from `to_json()` (a resumed run's saved progress)."""
        return cls(**{**value, "notes": StageNotes.from_json(value["notes"])})


@dataclass
class Baseline:
    """The model before any stage, and what every stage is compared to."""

    model: nn.Module
    lineage: Lineage
    metrics: Metrics | None  # None on ranks other than 0 of a multi-process run
    reference: Reference | None


@dataclass
class Progress:
    """What the stages so far made: the model, how to rebuild it, and each stage's result."""

    model: nn.Module
    lineage: Lineage
    results: list[StageResult] = field(default_factory=list)

    def latest(self, baseline: Metrics | None) -> Metrics | None:
        return self.results[-1].metrics if self.results else baseline


class StageHooks:
    """What a caller adds around each stage of `run_stages`; each default does nothing."""

    def reuse(self, index: int, progress: Progress) -> Progress | None:
        """What stage `index` made earlier (tune: a candidate sharing these stages); None runs it."""
        return None

    def before(self, index: int, progress: Progress) -> Progress:
        """What stage `index` starts from (tune: a copy, in the random state the stages before it left)."""
        return progress

    def after(self, index: int, progress: Progress) -> bool:
        """Stage `index` is done (a run saves it for --resume); False ends the loop (tune drops a candidate)."""
        return True


@dataclass
class Result:
    """What `compress` returns: the compressed model, how to rebuild it, and every measurement."""

    model: nn.Module
    lineage: Lineage
    baseline: Metrics
    stages: list[StageResult]

    @property
    def final(self) -> Metrics:
        return self.stages[-1].metrics if self.stages and self.stages[-1].metrics else self.baseline


def compress(
    model: nn.Module | ModelSpec | dict[str, Any],
    stages: Sequence[BaseStageSpec | dict[str, Any]],
    *,
    data: DataBundle | dict[str, Any],
    evaluate: EvaluateSpec | dict[str, Any] | None = None,
    seed: int = 0,
) -> Result:
    """Apply `stages` (spec objects or their recipe form) to `model` (a module, or a recipe's `model:`
    section, which also makes the result rebuildable from a checkpoint) and measure the baseline and
    every stage on `data` (a `DataBundle` or a recipe's `data:` section). As with torchao's
    `quantize_`, a module passed in is changed in place: pass a copy to keep the original."""
    specs = [parse_stage(stage) for stage in stages]
    evaluation = evaluate if isinstance(evaluate, EvaluateSpec) else EvaluateSpec.model_validate(evaluate or {})
    with isolated_global_state():
        seed_everything(seed)
        if isinstance(model, nn.Module):
            lineage = Lineage({"in_memory": type(model).__qualname__})  # measured, not rebuildable from a file
            model_spec = None
        else:
            model_spec = model if isinstance(model, ModelSpec) else ModelSpec.model_validate(model)
            model, lineage = load_model(model_spec)
        bundle = data if isinstance(data, DataBundle) else _build_data(data, seed, model_spec, specs, evaluation)
        baseline = start(model, lineage, bundle, evaluation, specs)
        ctx = StageContext(
            data=bundle, original_model=copy.deepcopy(model), lineage=lineage, evaluate=evaluation, seed=seed,
            load_model=load_model,
        )  # fmt: skip
        keeping = _KeepSnapshots(len(specs))
        done = run_stages(Progress(model, lineage), specs, ctx, baseline, keeping)
        snapshots = [ctx.original_model, *keeping.snapshots]
        add_latencies(snapshots, [baseline.metrics] + [r.metrics for r in done.results], bundle, evaluation)
    assert baseline.metrics is not None
    return Result(model=done.model, lineage=done.lineage, baseline=baseline.metrics, stages=done.results)


class _KeepSnapshots(StageHooks):
    """Each stage's model for the side-by-side timing: stages change the model in place, so every one
    but the last is a copy."""

    def __init__(self, stages: int):
        self.stages, self.snapshots = stages, []

    def after(self, index: int, progress: Progress) -> bool:
        last = index == self.stages - 1
        self.snapshots.append(progress.model if last else copy.deepcopy(progress.model))
        return True


def start(
    model: nn.Module,
    lineage: Lineage,
    data: DataBundle,
    evaluate: EvaluateSpec,
    specs: Sequence[BaseStageSpec],
    constraints: Sequence[Any] = (),
    *,
    measure: bool = True,
) -> Baseline:
    """The checks every caller runs before any stage (the model takes the data's inputs and fits its
    classes; every gate names a metric that exists), then the baseline's measurements (none with
    `measure=False`: ranks other than 0 of a multi-process run)."""
    model.eval()
    check_model_fits_data(model, data, specs)
    if not measure:
        return Baseline(model, lineage, None, None)
    metrics, reference = measure_model(model, lineage, data, evaluate)
    for spec in constraints:
        check_gated_metrics_exist(spec, metrics)
    return Baseline(model, lineage, metrics, reference)


def run_stages(
    progress: Progress,
    specs: Sequence[BaseStageSpec],
    ctx: StageContext,
    baseline: Baseline,
    hooks: StageHooks | None = None,
    *,
    first: int = 0,
) -> Progress:
    """The one stage loop: apply and measure each stage from `first` on (a resumed run starts later)
    with `ctx`'s data and settings, around each what `hooks` add. Returns what the last stage made."""
    hooks = hooks or StageHooks()
    names = stage_names(specs)
    for index in range(first, len(specs)):
        reused = hooks.reuse(index, progress)
        if reused is not None:
            progress = reused
        else:
            progress = hooks.before(index, progress)
            here = replace(ctx, lineage=progress.lineage, notes={})
            before = progress.latest(baseline.metrics)
            model, result = run_stage(progress.model, specs[index], names[index], here, baseline.reference, before)
            progress = Progress(model, progress.lineage, [*progress.results, result])
        if not hooks.after(index, progress):
            break
    return progress


def _build_data(
    spec: dict[str, Any], seed: int, model: ModelSpec | None, stages: list[BaseStageSpec], evaluate: EvaluateSpec
) -> DataBundle:
    parsed = TypeAdapter(DataSpec).validate_python(spec)
    return build_data(parsed, seed, model, tuning_split=needs_tuning_split(stages), evaluation=evaluate.data)


def measure_model(
    model: nn.Module, lineage: Lineage, data: DataBundle, evaluate: EvaluateSpec
) -> tuple[dict[str, Any], Reference]:
    """The baseline's metrics (all but latency) and its outputs, which every stage is compared to."""
    log(f"baseline: {sum(p.numel() for p in model.parameters()):,} parameters, measuring")
    metrics, reference = measure(model, data, evaluate, len(to_bytes(model, lineage, data.input_shape)))
    log(summary("baseline", metrics))
    return metrics, reference


def run_stage(
    model: nn.Module,
    spec: BaseStageSpec,
    name: str,
    ctx: StageContext,
    reference: Reference | None,
    before: dict[str, Any] | None,
) -> tuple[nn.Module, StageResult]:
    """Apply one stage and measure the model it leaves (no latency yet: that is timed side by side at
    the end). Without `reference` (ranks other than 0) nothing is measured."""
    log(f"stage {name} ({spec.kind})")
    start = time.perf_counter()
    with model_errors(name, model, ctx.data):
        model = apply_stage(model, spec, ctx, name).eval()
    duration = time.perf_counter() - start
    metrics = None
    if reference is not None:
        size = len(to_bytes(model, ctx.lineage, ctx.data.input_shape))
        with model_errors(name, model, ctx.data):
            metrics, _ = measure(model, ctx.data, ctx.evaluate, size, reference)
        log(summary(name, metrics))
    notes = ctx.notes_for(name)
    if spec.only_trains and metrics and before and metrics["accuracy"] < before["accuracy"]:  # False for NaN
        change = (metrics["accuracy"] - before["accuracy"]) * 100
        notes.findings.append(
            f"ended worse than it started: validation accuracy {before['accuracy']:.4f} -> "
            f"{metrics['accuracy']:.4f} ({change:+.2f} points)"
        )
    params = spec.model_dump(mode="json", exclude={"kind", "name"})
    return model, StageResult(name, spec.kind, params, metrics, duration, notes)


def check_model_fits_data(model: nn.Module, data: DataBundle, specs: Sequence[BaseStageSpec]) -> None:
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
    if any(spec.replaces_head for spec in specs):
        return
    if not data.exact_classes and out.shape[1] < data.num_classes:
        raise UserError(f"model outputs {out.shape[1]} classes but the data has class index {data.num_classes - 1}")
    if data.exact_classes and out.shape[1] != data.num_classes:
        raise UserError(
            f"model outputs {out.shape[1]} classes but the data has {data.num_classes}; set model.num_classes: "
            f"{data.num_classes}, or replace the classifier with a finetune stage's num_classes"
        )


@contextmanager
def model_errors(stage: str, model: nn.Module, data: DataBundle) -> Iterator[None]:
    """Turn a stage's user errors, and forward passes broken by the stage, into one-line UserErrors.

    A RuntimeError is blamed on the model only if the model then fails on its own, at a layer we can
    name; anything else is a bug of ours and keeps its traceback."""
    try:
        yield
    except UserError as exc:
        raise UserError(f"stage {stage!r}: {exc}") from None
    except RuntimeError as exc:
        layer = failing_layer(model, data.example_inputs(1))
        if layer is None:
            raise
        raise UserError(
            f"stage {stage!r} left a model that fails at layer {layer!r} ({first_line(exc)}); exclude that layer"
        ) from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def isolated_global_state() -> Iterator[None]:
    """Restore the random generators and torch's thread count however the work inside ends."""
    python, numpy, generator = random.getstate(), np.random.get_state(), torch.get_rng_state()
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)
        torch.set_rng_state(generator)
        torch.set_num_threads(threads)


def summary(name: str, m: dict[str, Any]) -> str:
    quality = f"accuracy {m['accuracy']:.4f}, loss {m['loss']:.4f}, " if not math.isnan(m["accuracy"]) else ""
    agreement = f"agreement {m['agreement']:.4f}, " if not math.isnan(m.get("agreement", math.nan)) else ""
    own = "".join(f"{key} {value:.4f}, " for key, value in m.get("custom", {}).items())
    return (
        f"{name}: {quality}{agreement}{own}cosine to original {m['cosine']:.4f}, sparsity {m['sparsity']:.1%}, "
        f"{human_bytes(m['size_bytes'])}"
    )
