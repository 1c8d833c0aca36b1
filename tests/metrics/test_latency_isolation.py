"""Timing that nothing else in the process disturbs, and numbers checked before they are reported
(`metrics.latency`): another runtime is timed in a process of its own; an implausible measurement is
taken again, and what stays implausible carries a warning that the report turns into a finding."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import torch
from torch import nn

from modelshrink.metrics import latency
from modelshrink.metrics.latency import ATTEMPTS, disagreement, implausible, measure_latencies
from modelshrink.models.zoo import small_cnn

pytest.importorskip("onnxruntime")


def onnx_runtime_model(model: nn.Module, example: torch.Tensor) -> nn.Module:
    from modelshrink.export.onnx import OnnxRuntimeModel, to_onnx

    return OnnxRuntimeModel(to_onnx(model.eval(), example), threads=1)


def test_another_runtime_is_timed_in_a_process_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    model = small_cnn(in_channels=1, width=8).eval()
    session = onnx_runtime_model(model, torch.randn(2, 1, 8, 8))
    x = torch.randn(1, 1, 8, 8)
    torch.testing.assert_close(session(x), model(x), rtol=1e-4, atol=1e-4)  # it runs here, for quality

    def not_here(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("ONNX Runtime was timed in the process that times PyTorch")

    monkeypatch.setattr(type(session), "forward", not_here)
    [_, onnx_timing] = measure_latencies(
        [model, session], x, torch.randn(4, 1, 8, 8), warmup=1, iterations=10, threads=1
    )
    assert onnx_timing["batch1_median"] > 0 and onnx_timing["batchN_median"] > 0
    assert "isolation" not in onnx_timing


def test_a_worker_that_cannot_start_leaves_the_model_timed_here_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = small_cnn(in_channels=1, width=8).eval()
    session = onnx_runtime_model(model, torch.randn(2, 1, 8, 8))
    monkeypatch.setattr(latency.sys, "executable", os.devnull)  # not a program
    [_, onnx_timing] = measure_latencies(
        [model, session], torch.randn(1, 1, 8, 8), torch.randn(4, 1, 8, 8), warmup=0, iterations=2, threads=1
    )
    assert onnx_timing["isolation"].startswith("timed beside PyTorch, not in a process of its own")
    assert "warnings" not in onnx_timing or not any("beside PyTorch" in w for w in onnx_timing["warnings"])


class Sleeper(nn.Module):
    """Takes `ms[batch size]` milliseconds per call: a model whose times we know."""

    def __init__(self, ms: dict[int, float]):
        super().__init__()
        self.ms = ms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.ms[x.shape[0]] / 1000)
        return x


def test_a_batch_faster_than_a_single_input_is_measured_again_then_flagged() -> None:
    impossible = Sleeper({1: 6.0, 8: 1.0})  # batch 8 in a sixth of batch 1's time: noise, never a model
    [timing] = measure_latencies([impossible], torch.zeros(1), torch.zeros(8), warmup=0, iterations=3, threads=1)
    assert timing["attempts"] == ATTEMPTS
    assert any("batch 8" in w and "ran faster than batch 1" in w for w in timing["warnings"])

    plausible = Sleeper({1: 2.0, 8: 4.0})
    [timing] = measure_latencies([plausible], torch.zeros(1), torch.zeros(8), warmup=0, iterations=3, threads=1)
    assert timing["attempts"] == 1 and "warnings" not in timing


def test_a_measurement_that_turns_plausible_is_kept_without_a_warning() -> None:
    class Disturbed(Sleeper):
        """Slow at batch 1 for its first calls only, as if another process had held the CPU."""

        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if x.shape[0] == 1 and self.calls <= 8:
                time.sleep(0.02)
            return super().forward(x)

    [timing] = measure_latencies(
        [Disturbed({1: 1.0, 8: 3.0})], torch.zeros(1), torch.zeros(8), warmup=0, iterations=3, threads=1
    )
    assert timing["attempts"] == 2 and "warnings" not in timing
    assert timing["batch1_median"] < 5


def test_plausibility_checks_by_hand() -> None:
    steady = {"batch1_median": 1.0, "batch1_p95": 1.3, "batchN_median": 3.0, "batchN_p95": 3.3, "batch_n": 8}
    assert implausible(steady, samples=50) == []
    spiky = {**steady, "batch1_p95": 2.5}
    assert implausible(spiky, samples=50) == ["batch 1 p95 2.50 ms is 2.5x its median 1.00 ms"]
    assert implausible(spiky, samples=5) == [], "with a handful of samples a p95 is one outlier"
    assert disagreement(steady, {**steady, "batch1_median": 1.2}) == []
    assert disagreement(steady, {**steady, "batchN_median": 4.5}) == [
        "the same model timed twice at batch 8 took 3.00 and 4.50 ms"
    ]
