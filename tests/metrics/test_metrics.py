"""MACs, parameter counts and latency measurement against hand-computed values."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from modelshrink.metrics.latency import measure_latencies, percentile
from modelshrink.metrics.size import count_macs, count_parameters


def test_macs_of_conv_and_linear_by_hand() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
    expected = (8 * 6 * 6) * (3 * 3 * 3) + (8 * 6 * 6) * 5
    assert count_macs(model, torch.randn(1, 3, 6, 6)) == expected


def test_quantized_linear_keeps_its_macs_and_params() -> None:
    from modelshrink.stages.quantize.dynamic import QuantizeDynamic

    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    float_macs, float_counts = count_macs(model, torch.randn(1, 16)), count_parameters(model)
    quantized = QuantizeDynamic(["0", "2"], "qint8").replay(model)
    assert count_macs(quantized, torch.randn(1, 16)) == float_macs == 16 * 32 + 32 * 4
    assert count_parameters(quantized)["params"] == float_counts["params"] == 16 * 32 + 32 + 32 * 4 + 4


def test_latency_keys_percentile_and_thread_count_restored() -> None:
    models = [nn.Linear(8, 8), nn.Sequential(nn.Linear(8, 512), nn.Linear(512, 8))]
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        timings = measure_latencies(models, torch.randn(1, 8), torch.randn(4, 8), warmup=1, iterations=5, threads=1)
        assert torch.get_num_threads() == 2, "timing with threads=1 must leave the caller's thread count as it was"
    finally:
        torch.set_num_threads(previous)
    assert len(timings) == 2 and timings[0]["batch_n"] == 4 and timings[0]["threads"] == 1
    for t in timings:
        assert 0 < t["batch1_median"] <= t["batch1_p95"]
    assert percentile(list(map(float, range(1, 101))), 95) == pytest.approx(95.05, abs=0.1)


def test_agreement_is_the_share_of_predictions_the_original_model_also_made() -> None:
    import math

    from torch.utils.data import DataLoader, TensorDataset

    from modelshrink.metrics.accuracy import evaluate_outputs
    from modelshrink.models.zoo import mlp

    torch.manual_seed(0)
    original = mlp(in_features=4, hidden=8, num_classes=3).eval()
    changed = mlp(in_features=4, hidden=8, num_classes=3).eval()
    changed.load_state_dict(original.state_dict())
    with torch.no_grad():
        changed[-1].bias += torch.tensor([0.3, 0.0, -0.3])  # moves some predictions, not all
    x = torch.randn(64, 4)
    loader = DataLoader(TensorDataset(x, torch.zeros(64, dtype=torch.long)), batch_size=16)
    baseline, reference = evaluate_outputs(original, loader)
    assert baseline["agreement"] == 1.0
    expected = (changed(x).argmax(1) == original(x).argmax(1)).float().mean().item()
    assert 0 < expected < 1
    assert evaluate_outputs(changed, loader, reference=reference)[0]["agreement"] == pytest.approx(expected)
    unlabeled = evaluate_outputs(changed, loader, labeled=False, reference=reference)[0]
    assert unlabeled["agreement"] == pytest.approx(expected), "a classifier's agreement needs no labels"
    assert math.isnan(unlabeled["accuracy"]) and math.isnan(unlabeled["top5"])

    class Embedder(nn.Module):  # a Hugging Face embedding model says so by its task
        task = "embedding"

        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    _, embedded = evaluate_outputs(Embedder(original), loader, labeled=False)
    moved = evaluate_outputs(Embedder(changed), loader, labeled=False, reference=embedded)[0]
    assert math.isnan(moved["agreement"]), "an embedding's argmax is no prediction: null, never a number"
    assert 0 < moved["cosine"] < 1


class ColdAfterAnother(nn.Module):
    """Slow on the first call after another model's call (its data left the caches), fast after its own."""

    def __init__(self, name: str, calls: list[str]) -> None:
        super().__init__()
        self.name, self.calls = name, calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        if self.calls and self.calls[-1] != self.name:
            time.sleep(0.02)
        self.calls.append(self.name)
        return x


def test_latency_is_a_models_own_back_to_back_time_and_models_still_take_turns() -> None:
    calls: list[str] = []
    models = [ColdAfterAnother("a", calls), ColdAfterAnother("b", calls)]
    [a, b] = measure_latencies(models, torch.zeros(1), torch.zeros(2), warmup=1, iterations=10, threads=None)
    assert a["batch1_median"] < 10 and b["batch1_median"] < 10, "a switch-in call was timed"
    assert a["batch1_p95"] < 10 and b["batchN_p95"] < 10
    switches = sum(1 for one, two in itertools.pairwise(calls) if one != two)
    assert switches >= 6, "the models must alternate within each measurement, so that drift hits both alike"


def test_output_drop_scores_sentence_embeddings_by_cosine_and_logits_by_agreement() -> None:
    """A sentence encoder's normalised (batch, dim) output is no logits: mixed precision and analyze must
    not rank layers by whether its argmax moved (they did, on MiniLM), but as the report decides it."""
    from modelshrink.metrics.drop import OutputDrop, is_classifier
    from tests.conftest import tensor_data

    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(16, 32), nn.Tanh())
    embed = nn.Sequential(encoder, nn.Identity())
    embed.forward = lambda x: nn.functional.normalize(encoder(x), dim=1)  # type: ignore[method-assign]
    x = torch.randn(64, 16)
    unlabeled = tensor_data(x, labeled=False)
    labeled = tensor_data(x, labels=torch.randint(0, 10, (64,)))
    assert not is_classifier(embed, x[:8], "auto", unlabeled)
    assert is_classifier(nn.Linear(16, 10), x[:8], "auto", labeled)
    assert is_classifier(embed, x[:8], "classification", unlabeled), "evaluate.task decides when set"
    nudged = nn.Sequential(nn.Linear(16, 32), nn.Tanh())
    nudged.load_state_dict(encoder.state_dict())
    with torch.no_grad():
        nudged[0].weight.add_(0.05 * torch.randn_like(nudged[0].weight))
    other = nn.Sequential(nudged, nn.Identity())
    other.forward = lambda x: nn.functional.normalize(nudged(x), dim=1)  # type: ignore[method-assign]
    drop = OutputDrop(embed, [x], is_classifier(embed, x, "auto", unlabeled))
    cosine = nn.functional.cosine_similarity(other(x), embed(x), dim=1).mean().item()
    assert drop(other) == pytest.approx(1 - cosine, abs=1e-6) and 0 < drop(other) < 0.05


def test_more_latency_threads_than_usable_cores_is_a_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelshrink import report

    monkeypatch.setattr(report, "usable_cores", lambda: 2)
    baseline = {"latency_ms": {"threads": 8, "attempts": 1}}
    notes = report._timing_findings(baseline, [], [])
    assert notes == [
        "latency measured with 8 threads on 2 usable cores: the threads take turns, so times rise and vary; "
        "set evaluate.latency.threads to at most 2"
    ]
    assert report._timing_findings({"latency_ms": {"threads": 2, "attempts": 1}}, [], []) == []
