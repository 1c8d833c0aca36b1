"""Run a recipe: load model and data, measure the baseline, apply and measure each stage, gate, write.

The only place that writes files, and it writes them all at once at the end (see `atomic`), so a
stage that fails leaves nothing behind and an existing output is never half-replaced.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modelshrink.atomic import write_directory
from modelshrink.checkpoint import to_bytes
from modelshrink.constraints import check_constraints
from modelshrink.data import DataBundle, build_data
from modelshrink.diagnose import failing_layer
from modelshrink.errors import ConstraintFailed, UserError
from modelshrink.metrics import add_latencies, measure
from modelshrink.models import load_model
from modelshrink.progress import log
from modelshrink.recipe.schema import Recipe
from modelshrink.report import build_report, human_bytes, to_json, to_markdown
from modelshrink.stages import STAGES, StageContext


def run(
    recipe: Recipe, *, output_dir: Path | None = None, force: bool = False, recipe_source: str | None = None
) -> dict[str, Any]:
    out_dir = Path(output_dir) if output_dir is not None else recipe.output.dir
    check_output_dir(out_dir, recipe, force)
    seed_everything(recipe.seed)

    data = build_data(recipe.data, recipe.seed)
    model, lineage = load_model(recipe.model)
    model.eval()
    check_model_fits_data(model, data)
    ctx = StageContext(
        data=data, original_model=copy.deepcopy(model), lineage=lineage, evaluate=recipe.evaluate, seed=recipe.seed
    )

    log(f"baseline: {sum(p.numel() for p in model.parameters()):,} parameters, measuring")
    blob = to_bytes(model, lineage, data.input_shape)
    baseline = measure(model, data, recipe.evaluate, len(blob))
    log(_summary("baseline", baseline))

    results, snapshots = [], [ctx.original_model]
    for spec, name in zip(recipe.stages, recipe.stage_names(), strict=True):
        log(f"stage {name} ({spec.kind})")
        start = time.perf_counter()
        with _model_errors(name, model, data):
            model = STAGES[spec.kind](spec, name).apply(model, ctx).eval()
        duration = time.perf_counter() - start
        blob = to_bytes(model, lineage, data.input_shape)
        with _model_errors(name, model, data):
            metrics = measure(model, data, recipe.evaluate, len(blob))
        log(_summary(name, metrics))
        params = spec.model_dump(mode="json", exclude={"kind", "name"})
        results.append({"name": name, "kind": spec.kind, "params": params, "metrics": metrics, "duration_s": duration})
        snapshots.append(copy.deepcopy(model))  # later stages may change `model` in place

    log(f"timing {len(snapshots)} models side by side")
    add_latencies(snapshots, [baseline] + [r["metrics"] for r in results], data, recipe.evaluate)
    final = results[-1]["metrics"] if results else baseline
    constraints = check_constraints(recipe.constraints, baseline, final)
    report = build_report(
        recipe=recipe.model_dump(mode="json"),
        recipe_source=recipe_source,
        baseline=baseline,
        stages=results,
        constraints=constraints,
        checkpoint=recipe.output.checkpoint_name,
    )
    write_directory(
        out_dir,
        {
            recipe.output.checkpoint_name: blob,
            "report.json": to_json(report).encode(),
            "report.md": to_markdown(report).encode(),
        },
        replace=force,
    )
    log(f"wrote {out_dir}/ ({recipe.output.checkpoint_name}, report.json, report.md)")
    if not report["passed"]:
        failed = ", ".join(
            f"{c['name']} (limit {c['limit']:.4f}, got {c['value']:.4f})" for c in constraints if not c["passed"]
        )
        raise ConstraintFailed(f"constraint failed: {failed}; reports in {out_dir}", report)
    return report


@contextmanager
def _model_errors(stage: str, model: nn.Module, data: DataBundle) -> Iterator[None]:
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
        first = str(exc).strip().splitlines()[0]
        raise UserError(
            f"stage {stage!r} left a model that fails at layer {layer!r} ({first}); exclude that layer"
        ) from None


def check_output_dir(out_dir: Path, recipe: Recipe, force: bool) -> None:
    """Refuse before any work is done: never overwrite silently, never delete the input."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output.dir: {out_dir} exists and is not a directory")
    source = recipe.model.checkpoint
    if source is not None and source.resolve().is_relative_to(out_dir.resolve()):
        raise UserError(f"output.dir: {out_dir} holds the input checkpoint {source}; choose another output dir")
    if out_dir.exists() and not force:
        raise UserError(f"output.dir: {out_dir} already exists; pass --force to replace it")


def check_model_fits_data(model: nn.Module, data: DataBundle) -> None:
    inputs = data.example_inputs(2)
    try:
        with torch.inference_mode():
            out = model(inputs)
    except (RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"model does not accept inputs of shape {tuple(inputs.shape)} from data: {first}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != inputs.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"model output {shape} is not (batch, classes) logits")
    if out.shape[1] != data.num_classes:
        raise UserError(
            f"model outputs {out.shape[1]} classes but the data has {data.num_classes}; "
            f"set model.num_classes: {data.num_classes} (or use a checkpoint trained on this data)"
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _summary(name: str, m: dict[str, Any]) -> str:
    return (
        f"{name}: accuracy {m['accuracy']:.4f}, loss {m['loss']:.4f}, sparsity {m['sparsity']:.1%}, "
        f"{human_bytes(m['size_bytes'])}"
    )
