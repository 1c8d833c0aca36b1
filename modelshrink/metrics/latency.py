"""Wall-clock latency of a forward pass: warm-up first, fixed thread count, median and p95."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


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
def time_forward(model: nn.Module, inputs: torch.Tensor, warmup: int, iterations: int) -> list[float]:
    """Milliseconds per forward pass, one sample per iteration."""
    model.eval()
    for _ in range(warmup):
        model(inputs)
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        model(inputs)
        samples.append((time.perf_counter() - start) * 1000.0)
    return samples


def percentile(samples: list[float], q: float) -> float:
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[round(q) - 1]


def measure_latency(
    model: nn.Module, batch1: torch.Tensor, batch_n: torch.Tensor, *, warmup: int, iterations: int, threads: int | None
) -> dict[str, float]:
    with thread_count(threads) as used:
        one = time_forward(model, batch1, warmup, iterations)
        many = time_forward(model, batch_n, warmup, iterations)
    return {
        "batch1_median": statistics.median(one),
        "batch1_p95": percentile(one, 95),
        "batchN_median": statistics.median(many),
        "batchN_p95": percentile(many, 95),
        "batch_n": int(batch_n.shape[0]),
        "threads": used,
    }
