"""Everything measured for the baseline and after each stage (`descriptors.Metrics`, report.json's keys).

Quality and size are measured right after each stage; latency for all of them at the end, side by
side (see `latency`), which is why `measure` and `add_latencies` are separate steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from modelshrink import distributed
from modelshrink.data.bundle import DataBundle
from modelshrink.descriptors import Metrics
from modelshrink.metrics.accuracy import Reference, evaluate_outputs
from modelshrink.metrics.custom import custom_metrics
from modelshrink.metrics.latency import measure_latencies
from modelshrink.metrics.size import count_macs, count_parameters
from modelshrink.recipe.schema import EvaluateSpec

__all__ = ["Reference", "add_latencies", "measure", "reference_outputs"]


def measure(
    model: nn.Module, data: DataBundle, spec: EvaluateSpec, size_bytes: int, reference: Reference | None = None
) -> tuple[Metrics, Reference]:
    """Everything but latency (`latency_ms` stays None until `add_latencies`). Without `reference`
    the model is the original: its outputs come back as the reference for the stages after it."""
    model.eval()
    quality, outputs = _quality(model, data, spec, reference)
    metrics: Metrics = {  # type: ignore[typeddict-item]
        **quality,
        "custom": custom_metrics(model, data.val, spec.metrics),
        "latency_ms": None,
        **count_parameters(model),
        "macs": count_macs(model, data.example_inputs(1)),
        "size_bytes": size_bytes,
    }
    return metrics, outputs


def _quality(
    model: nn.Module, data: DataBundle, spec: EvaluateSpec, reference: Reference | None
) -> tuple[dict[str, float], Reference]:
    return evaluate_outputs(
        model,
        data.val,
        spec.max_val_batches,
        labeled=data.labeled,
        class_targets=data.class_targets,
        task=spec.task,
        reference=reference,
    )


def reference_outputs(model: nn.Module, data: DataBundle, spec: EvaluateSpec) -> Reference:
    return _quality(model, data, spec, None)[1]


def add_latencies(
    models: Sequence[nn.Module], metrics: Sequence[dict[str, Any]], data: DataBundle, spec: EvaluateSpec
) -> None:
    """Time all models side by side and fill in each one's `latency_ms`."""
    latency = spec.latency
    timings = measure_latencies(
        models,
        data.example_inputs(1),
        data.example_inputs(latency.batch_size),
        warmup=latency.warmup,
        iterations=latency.iterations,
        threads=latency.threads or distributed.DEFAULT_THREADS,
    )
    for entry, timing in zip(metrics, timings, strict=True):
        entry["latency_ms"] = timing
