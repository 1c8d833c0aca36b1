"""The compiled deployed form (`modelshrink.compiled`): inference runs compiled with freezing, anything
else eager; compile time is counted apart from latency; copies and reloads compile on their own."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn

from modelshrink.checkpoint import from_bytes, to_bytes
from modelshrink.compiled import Compile, Compiled
from modelshrink.lineage import Lineage
from modelshrink.metrics.latency import measure_latencies, time_round_robin
from modelshrink.report import findings


def small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def test_inference_runs_compiled_and_everything_else_eager() -> None:
    model = Compiled(small())
    x = torch.randn(3, 8)
    eager = model(x)  # gradients on: eager, nothing compiled
    assert model.compile_time == (0, 0) and eager.requires_grad
    with torch.inference_mode():
        deployed = model(x)
        model(x)
    seconds, compiles = model.compile_time
    assert compiles == 1 and seconds > 0, "one compile for one input shape, timed"
    torch.testing.assert_close(deployed, eager.detach())
    model.train()
    assert model.compile_time == (0, 0), "training changes weights a frozen graph folded in: compile anew"


def test_a_copy_compiles_on_its_own_and_the_state_dict_is_the_inner_models() -> None:
    model = Compiled(small())
    with torch.inference_mode():
        model(torch.randn(2, 8))
    twin = copy.deepcopy(model)
    assert twin.compile_time == (0, 0) and twin._compiled is None
    assert set(model.state_dict()) == {f"inner.{k}" for k in small().state_dict()}


def test_a_deferred_model_serves_inference_from_its_package_and_rebuilds_only_when_needed() -> None:
    torch.manual_seed(0)
    eager = nn.Linear(4, 2).eval()
    builds: list[int] = []

    def build() -> nn.Module:
        builds.append(1)
        return copy.deepcopy(eager)

    package = lambda x: eager(x) + 100.0  # noqa: E731  (stands for the AOTInductor package: told apart by +100)
    model = Compiled.deferred(build, package)
    x = torch.randn(3, 4)
    with torch.inference_mode():
        assert torch.equal(model.eval()(x), eager(x) + 100.0), "inference runs the package"
    model.training = False  # setting an attribute reads no module tree
    assert builds == [] and model.pending, "nothing needed the eager model yet"
    assert [name for name, _ in model.named_parameters()] == ["inner.weight", "inner.bias"]
    assert builds == [1] and not model.pending, "rebuilt once, when its parameters were asked for"
    assert model.out_features == 2, "the wrapped model's attributes read through the wrapper"
    assert torch.equal(model(x), eager(x)), "with gradients on, the eager model runs"
    twin = copy.deepcopy(Compiled.deferred(build, package))
    assert builds == [1, 1] and torch.equal(twin.inner.weight, eager.weight), "a copy holds the rebuilt model"


def test_a_checkpoint_with_a_compile_record_reloads_compiled() -> None:
    architecture = {"factory": "tests.test_compiled:small"}
    model = Compile().replay(small())
    rebuilt, lineage = from_bytes(to_bytes(model, Lineage(architecture, [Compile()])), trust=["tests.test_compiled"])
    assert isinstance(rebuilt, Compiled) and [t.kind for t in lineage.transforms] == ["compile"]
    assert Compile().replay(rebuilt) is rebuilt, "replaying twice does not wrap twice"
    x = torch.randn(2, 8)
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(x), model(x))


class CountsCalls(nn.Module):
    """Stands for a compiled model: has `compile_time`, counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.compile_time = (1.5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


def test_a_compiled_model_is_warmed_up_before_timing_and_its_compile_time_reported_apart() -> None:
    plain, compiled = nn.Identity(), CountsCalls()
    time_round_robin([plain, compiled], torch.zeros(1), warmup=0, iterations=1)
    assert compiled.calls == 3, "the compiling call is a warm-up (then one switch-in call, one timed)"
    [plain_timing, compiled_timing] = measure_latencies(
        [plain, compiled], torch.zeros(1, 2), torch.zeros(4, 2), warmup=0, iterations=1, threads=None
    )
    assert "compile_s" not in plain_timing
    assert (compiled_timing["compile_s"], compiled_timing["compiles"]) == (1.5, 1)


def test_the_report_gives_compile_time_as_a_finding() -> None:
    latency = {"batch1_median": 1.0, "batch1_p95": 1.1, "batchN_median": 4.0, "batchN_p95": 4.4}
    stage = {"name": "int8", "metrics": {"latency_ms": {**latency, "compile_s": 12.3, "compiles": 2}}}
    [note] = findings({"latency_ms": latency}, [stage])
    assert "compiling took 12.3 s over 2 call(s)" in note


@pytest.mark.parametrize("wanted", [True, False])
def test_compile_is_a_choice_on_every_quantize_mode(wanted: bool) -> None:
    from modelshrink.engine import compress
    from tests.conftest import FAST_EVAL

    data = {"kind": "synthetic", "channels": 3, "image_size": 8, "num_samples": 32, "batch_size": 16}
    source = {"factory": "tests.test_compiled:flat_classifier"}
    stage = {"kind": "quantize", "mode": "dynamic", "compile": wanted}
    result = compress(source, [stage], data=data, evaluate=FAST_EVAL)
    assert ("compile" in [t.kind for t in result.lineage.transforms]) is wanted
    assert isinstance(result.model, Compiled) is wanted
    assert result.final["cosine"] > 0.99


def flat_classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.mark.parametrize("faster", ["eager", "compiled (inductor, freezing)"])
def test_compile_auto_measures_a_model_that_may_gain_and_keeps_the_faster(
    faster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelshrink.engine import compress
    from modelshrink.stages.quantize import choose
    from tests.conftest import FAST_EVAL

    measured = choose.measure

    def measure_with_a_winner(*args: Any) -> list[choose.Trial]:
        trials = measured(*args)
        assert [t.name for t in trials] == ["eager", "compiled (inductor, freezing)"]
        eager, compiled = (t.cosine for t in trials)  # to float; per-token int8 rounds differently per CPU
        assert min(eager, compiled) > 0.99 and abs(eager - compiled) < 0.005, "compiling keeps the outputs"
        return [replace(t, slowness=1.0 if t.name == faster else 2.0) for t in trials]

    monkeypatch.setattr(choose, "measure", measure_with_a_winner)
    data = {"kind": "synthetic", "channels": 3, "image_size": 8, "num_samples": 32, "batch_size": 16}
    stage = {"kind": "quantize", "mode": "dynamic", "activations": "per_token"}  # gains_compiled
    result = compress({"factory": "tests.test_compiled:flat_classifier"}, [stage], data=data, evaluate=FAST_EVAL)
    assert isinstance(result.model, Compiled) is (faster != "eager")
    assert (
        f"execution chosen on the calibration data (not the validation split), timed at batch 1 and 2: {faster} ("
        in " ".join(result.stages[0].notes.findings)
    )
