"""A model that runs through torch.compile (inductor, freezing): the deployed form of PT2E int8.

torchao's PT2E graph runs quantize/dequantize around float kernels in eager mode, slower than fp32;
inductor with freezing folds the int8 weights into constants and fuses the pattern into int8 oneDNN
kernels (issue #12 measured ResNet-18 at 224: 0.9x fp32 eager -> 5.3x at batch 16). So a model that
only pays off compiled is wrapped in `Compiled`, recorded as a `Compile` transform: a reloaded
checkpoint is wrapped the same way and compiles on its first call, and what the report times is what
the user runs.

Compilation is lazy (on the first inference call, and again for each new input shape: static shapes,
because a dynamic-batch recompile hit an inductor bug in its int8 convolution lowering on a pruned
ResNet, and a deployment runs fixed batch sizes; past dynamo's recompile limit, 8, a shape runs eager)
and timed (calls that made dynamo compile a frame), so that the report can
give compile time apart from latency. Only inference runs compiled: with gradients on, in training
mode or under a dispatch mode (FLOP counting) the eager module runs, because a frozen graph has its
weights baked in and sees no hooks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from modelshrink.lineage import Transform


class Compiled(nn.Module):
    """`inner` run through torch.compile with inductor's freezing at inference; eager otherwise.

    The compiled function is kept out of the module tree (its state_dict, `.train()` and deepcopy):
    a copy compiles anew on its own first call rather than share a graph whose weights were frozen
    from another module."""

    needs_compiler = True

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.training = inner.training
        self._reset()

    def _reset(self) -> None:
        self.__dict__["_compiled"] = None
        self.__dict__["compile_seconds"] = []  # how long each call that compiled took

    def use_package(self, package: Any) -> None:
        """Run an AOTInductor package of this model at inference instead of compiling it
        (`compiled_artifact`: a reloaded checkpoint's package); training or a new state drops it."""
        self.__dict__["_compiled"] = package

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_compiled", "compile_seconds")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._reset()

    def train(self, mode: bool = True) -> Compiled:
        if mode:
            self._reset()  # training changes the weights a frozen graph has folded in
        return super().train(mode)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._reset()
        super()._load_from_state_dict(*args, **kwargs)

    @property
    def compile_time(self) -> tuple[float, int]:
        """Seconds spent in calls that compiled, and how many compiled (one per input shape until the
        batch dimension turns dynamic)."""
        return sum(self.compile_seconds), len(self.compile_seconds)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.training or torch.is_grad_enabled() or _get_current_dispatch_mode() is not None:
            return self.inner(*args, **kwargs)
        import torch._inductor.config as inductor
        from torch._dynamo.utils import counters

        if self._compiled is None:
            self.__dict__["_compiled"] = torch.compile(self.inner, dynamic=False)
        compiled_before, start = counters["frames"]["total"], time.perf_counter()
        with inductor.patch(freezing=True):
            outputs = self._compiled(*args, **kwargs)
        if counters["frames"]["total"] != compiled_before:
            self.compile_seconds.append(time.perf_counter() - start)
        return outputs


@dataclass(frozen=True)
class Compile(Transform, kind="compile", keeps_float=False):
    """Run the model through torch.compile with inductor's freezing (see `Compiled`)."""

    def replay(self, model: nn.Module) -> nn.Module:
        return model if isinstance(model, Compiled) else Compiled(model)
