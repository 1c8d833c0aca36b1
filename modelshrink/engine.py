"""Apply stages to a model in memory and measure each one: the work `compress` and `run_recipe` share.

`compress` is the whole of it for a model, a stage list and data held in memory: no recipe file, no
output directory, no files written, and the global state it touches (random generators, torch's
thread count) restored afterwards. `run_recipe` (pipeline.py) adds what a command-line run needs
around the same two steps, `measure_model` and `run_stage`: output checks and locking, resumable
progress, gates and the written reports.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import TypeAdapter
from torch import nn

from modelshrink.checkpoint import to_bytes
from modelshrink.data import DataBundle, build_data
from modelshrink.descriptors import Metrics, human_bytes
from modelshrink.diagnose import failing_layer
from modelshrink.errors import UserError, first_line
from modelshrink.lineage import Lineage
from modelshrink.loading import load_model
from modelshrink.metrics import Reference, add_latencies, measure
from modelshrink.progress import log
from modelshrink.recipe.schema import DataSpec, EvaluateSpec, ModelSpec
from modelshrink.recipe.stage_specs import BaseStageSpec, needs_tuning_split, parse_stage, stage_names
from modelshrink.stages import StageContext, apply_stage


@dataclass
class StageResult:
    """One stage's outcome, as report.json's `stages[]` holds it."""

    name: str
    kind: str
    params: dict[str, Any]
    metrics: Metrics | None  # None on ranks other than 0 of a multi-process run
    duration_s: float
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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
        model.eval()
        baseline, reference = measure_model(model, lineage, bundle, evaluation)
        ctx = StageContext(
            data=bundle, original_model=copy.deepcopy(model), lineage=lineage, evaluate=evaluation, seed=seed,
            load_model=load_model,
        )  # fmt: skip
        snapshots, results, before = [ctx.original_model], [], baseline  # stages change `model` in place
        for spec, name in zip(specs, stage_names(specs), strict=True):
            model, result = run_stage(model, spec, name, ctx, reference, before)
            snapshots.append(model if spec is specs[-1] else copy.deepcopy(model))
            results.append(result)
            before = result.metrics
        add_latencies(snapshots, [baseline] + [r.metrics for r in results], bundle, evaluation)
    return Result(model=model, lineage=lineage, baseline=baseline, stages=results)


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
    return model, StageResult(name, spec.kind, params, metrics, duration, notes.to_json())


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
