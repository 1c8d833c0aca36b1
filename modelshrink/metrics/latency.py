"""Wall-clock latency of forward passes: warm-up, fixed thread count, median and p95.

Models of one run are timed together, round-robin (a short burst of forwards of each in turn), so that
machine noise and drift hit them all alike and the ratios between them stay meaningful; timing each stage
right after it ran gave ratios off by up to 1.5x on a busy 2-core machine (training alone leaves
the process ~10% slower afterwards). Each burst starts with an untimed call: the first forward after
another model ran finds its weights out of the caches, and a deployed model runs back to back with
itself. Timed one call per turn, a 0.52 ms int8 ResNet-18 measured 0.97 ms beside its float original
(AMD EPYC, 2 threads).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from modelshrink.inputs import Inputs, batch_size, call

BURST = 5  # timed forwards per model per round: few enough that drift still hits every model alike


@contextmanager
def thread_count(threads: int | None) -> Iterator[int]:
    """Pin torch's intra-op threads for a measurement, and restore them afterwards."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


@torch.inference_mode()
def time_round_robin(
    models: Sequence[nn.Module], inputs: Inputs, warmup: int, iterations: int, burst: int = BURST
) -> list[list[float]]:
    """Milliseconds per forward pass for each model: `iterations` of them, timed in bursts of up to `burst`
    forwards of each model in turn, each burst after one untimed call. A model that compiles on its first
    call with new inputs (`modelshrink.compiled`) gets one warm-up call at least."""
    for model in models:
        model.eval()
        for _ in range(max(warmup, int(hasattr(model, "compile_time")))):
            call(model, inputs)
    samples: list[list[float]] = [[] for _ in models]
    for start_of_round in range(0, iterations, burst):
        for model, times in zip(models, samples, strict=True):
            call(model, inputs)  # switching in: caches still hold the previous model's data
            for _ in range(min(burst, iterations - start_of_round)):
                start = time.perf_counter()
                call(model, inputs)
                times.append((time.perf_counter() - start) * 1000.0)
    return samples


def percentile(samples: list[float], q: float) -> float:
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[round(q) - 1]


def measure_latencies(
    models: Sequence[nn.Module],
    batch1: Inputs,
    batch_n: Inputs,
    *,
    warmup: int,
    iterations: int,
    threads: int | None,
) -> list[dict[str, float]]:
    """Batch-1 and batch-N latency of each model, measured side by side. A compiled model (see
    `modelshrink.compiled`) compiles during the warm-up; the time its compiling calls took so far
    comes apart, as `compile_s` (and `compiles`, how many there were)."""
    with thread_count(threads) as used:
        ones = time_round_robin(models, batch1, warmup, iterations)
        manys = time_round_robin(models, batch_n, warmup, iterations)
    timings: list[dict[str, float]] = []
    for model, one, many in zip(models, ones, manys, strict=True):
        timing = {
            "batch1_median": statistics.median(one),
            "batch1_p95": percentile(one, 95),
            "batchN_median": statistics.median(many),
            "batchN_p95": percentile(many, 95),
            "batch_n": batch_size(batch_n),
            "threads": used,
        }
        compile_time = getattr(model, "compile_time", None)
        if compile_time is not None:
            timing["compile_s"], timing["compiles"] = compile_time
        timings.append(timing)
    return timings
