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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from modelshrink.lineage import Transform


class _Deferred(dict):
    """The module tree of a `Compiled` model whose AOTInductor package serves inference (see
    `Compiled.deferred`): `inner`, the eager model, is rebuilt by `build` the first time anything reads
    the tree (parameters, state_dict, `.to()`, a call with gradients on). Written by hand because
    rebuilding a PT2E int8 model replays torch.export (10 s for a ResNet-18) that a reload running its
    package never needs, and nn.Module reaches its children only through this dict."""

    def __init__(self, build: Callable[[], nn.Module]):
        super().__init__()
        self.build: Callable[[], nn.Module] | None = build

    def built(self) -> _Deferred:
        if self.build is not None:
            build, self.build = self.build, None
            dict.__setitem__(self, "inner", build())
        return self

    def __getitem__(self, key: str) -> Any:
        return dict.__getitem__(self.built(), key)

    def __setitem__(self, key: str, value: Any) -> None:
        dict.__setitem__(self.built(), key, value)

    def __delitem__(self, key: str) -> None:
        dict.__delitem__(self.built(), key)

    def __contains__(self, key: object) -> bool:  # asked by every attribute set: answered without building
        return key == "inner" if self.build is not None else dict.__contains__(self, key)

    def __iter__(self) -> Iterator[str]:
        return dict.__iter__(self.built())

    def __len__(self) -> int:
        return dict.__len__(self.built())

    def __reduce_ex__(self, protocol: Any) -> Any:  # a copy or pickle holds the rebuilt model, a plain dict
        return dict, (dict(self.built().items()),)

    def keys(self) -> Any:
        return dict.keys(self.built())

    def values(self) -> Any:
        return dict.values(self.built())

    def items(self) -> Any:
        return dict.items(self.built())

    def get(self, key: str, default: Any = None) -> Any:
        return dict.get(self.built(), key, default)

    def pop(self, key: str, *default: Any) -> Any:
        return dict.pop(self.built(), key, *default)


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
        self.__dict__["_compiled"] = self.__dict__["_package"] = None
        self.__dict__["compile_seconds"] = []  # how long each call that compiled took

    @classmethod
    def deferred(cls, build: Callable[[], nn.Module], package: Any) -> Compiled:
        """A reloaded model whose inference runs `package` at once, its eager model (`inner`) rebuilt by
        `build` only when first needed (see `_Deferred`); in eval mode, as `build`'s model must be."""
        model = cls(nn.Identity())
        model.__dict__["_modules"] = _Deferred(build)
        model.training = False  # an attribute of its own: the tree is not read
        model.use_package(package)
        return model

    @property
    def pending(self) -> bool:
        """Whether the eager model is still to be rebuilt (nothing has needed it yet)."""
        modules = self.__dict__["_modules"]
        return isinstance(modules, _Deferred) and modules.build is not None

    def use_package(self, package: Any) -> None:
        """Run an AOTInductor package of this model at inference instead of compiling it
        (`compiled_artifact`: a reloaded checkpoint's package); training or a new state drops it."""
        self.__dict__["_package"] = package

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_compiled", "_package", "compile_seconds")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._reset()

    def train(self, mode: bool = True) -> Compiled:
        if not mode and self.pending:  # `.eval()` after a reload: the model to be rebuilt is in eval mode
            return self
        if mode:
            self._reset()  # training changes the weights a frozen graph has folded in
        return super().train(mode)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._reset()
        super()._load_from_state_dict(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        """The wrapped model's attributes too (a text model's `pooling`, a classifier's `fc`): code written
        for the model keeps working on its compiled form, and on a reload of it."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name == "inner" or "inner" not in self.__dict__.get("_modules", {}):
                raise
            return getattr(self.inner, name)

    @property
    def compile_time(self) -> tuple[float, int]:
        """Seconds spent in calls that compiled, and how many compiled (one per input shape until the
        batch dimension turns dynamic)."""
        return sum(self.compile_seconds), len(self.compile_seconds)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.training or torch.is_grad_enabled() or _get_current_dispatch_mode() is not None:
            return self.inner(*args, **kwargs)
        if self._package is not None:  # nothing to compile: no compiler imported either
            return self._package(*args, **kwargs)
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
