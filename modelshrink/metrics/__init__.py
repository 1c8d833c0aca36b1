"""Everything measured after each stage, as one flat dict with the report's stable keys."""

from __future__ import annotations

from typing import Any

from torch import nn

from modelshrink.data.bundle import DataBundle
from modelshrink.metrics.accuracy import evaluate_classifier
from modelshrink.metrics.latency import measure_latency
from modelshrink.metrics.size import count_macs, count_parameters
from modelshrink.recipe.schema import EvaluateSpec

METRIC_KEYS = ("accuracy", "loss", "latency_ms", "params", "nonzero_params", "sparsity", "macs", "size_bytes")


def measure(model: nn.Module, data: DataBundle, spec: EvaluateSpec, size_bytes: int) -> dict[str, Any]:
    model.eval()
    latency = spec.latency
    metrics = {
        **evaluate_classifier(model, data.val, spec.max_val_batches),
        "latency_ms": measure_latency(
            model,
            data.example_inputs(1),
            data.example_inputs(latency.batch_size),
            warmup=latency.warmup,
            iterations=latency.iterations,
            threads=latency.threads,
        ),
        **count_parameters(model),
        "macs": count_macs(model, data.example_inputs(1)),
        "size_bytes": size_bytes,
    }
    return {key: metrics[key] for key in METRIC_KEYS}
