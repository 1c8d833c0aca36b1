"""Record and replay the shape changes structured pruning makes, so checkpoints rebuild safely.

Torch-Pruning's own `tp.state_dict` copies every module's `__dict__`, which can hold arbitrary
objects and so needs full unpickling to load. Here we keep only what a rebuild needs and what
`weights_only` loading accepts: each changed module's primitive attributes (`out_channels`,
`groups`, `num_features`, ...) and the new shapes of its parameters and buffers. Rebuilding sets
those attributes and swaps in empty tensors of the recorded shapes; the strict state_dict load
that follows fills in the values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modelshrink.lineage import Transform

_PRIMITIVES = (bool, int, float, str, type(None))
MAX_GROWN = 2**24  # values a recorded tensor may grow to (a new head of 16k classes x 1024 features)


def snapshot(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per module: its primitive public attributes and the shapes of its own tensors."""
    return {name: _describe(module) for name, module in model.named_modules()}


def record_changes(before: dict[str, dict[str, Any]], model: nn.Module) -> ReshapeModules | None:
    """A transform holding what changed since `before`, or None if nothing did."""
    changed: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        now, was = _describe(module), before.get(name)
        if was is None:
            continue
        attrs = {k: v for k, v in now["attrs"].items() if was["attrs"].get(k) != v}
        tensors = {k: v for k, v in now["tensors"].items() if was["tensors"].get(k) != v}
        if attrs or tensors:
            changed[name] = {"attrs": attrs, "tensors": tensors}
    return ReshapeModules(changed) if changed else None


@dataclass(frozen=True)
class ReshapeModules(Transform, kind="reshape_modules"):
    """Per changed module: its new primitive attributes and the new shapes of its tensors."""

    modules: dict[str, dict[str, Any]]

    def replay(self, model: nn.Module) -> nn.Module:
        """Read from a file, so checked as it goes (ValueError: a damaged record): only the module's own
        primitive attributes change, and a tensor keeps its rank and grows at most to `MAX_GROWN` values (a
        classifier replaced for more classes grows; pruning shrinks), so that a record cannot replace a
        method or make the rebuild allocate without bound."""
        for name, change in self.modules.items():
            module = model.get_submodule(name)
            for attr, value in change["attrs"].items():
                if attr.startswith("_") or not _is_primitive(getattr(module, attr, None)) or not _is_primitive(value):
                    raise ValueError(f"{name}.{attr} is not a plain attribute a pruned module changes")
                setattr(module, attr, tuple(value) if isinstance(getattr(module, attr, None), tuple) else value)
            for tensor_name, shape in change["tensors"].items():
                old = getattr(module, tensor_name)
                if not isinstance(old, torch.Tensor) or not _fits(shape, old):
                    raise ValueError(f"{name}.{tensor_name}: {shape!r} is not a pruned or new-head shape of "
                                     f"{tuple(old.shape)}")  # fmt: skip
                new = torch.empty(shape, dtype=old.dtype)
                if isinstance(old, nn.Parameter):
                    setattr(module, tensor_name, nn.Parameter(new, requires_grad=old.requires_grad))
                else:
                    module.register_buffer(tensor_name, new)
        return model


def _describe(module: nn.Module) -> dict[str, Any]:
    attrs = {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in vars(module).items()
        if not key.startswith("_") and key != "training" and _is_primitive(value)
    }
    tensors = {
        name: list(tensor.shape)
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        if tensor is not None
    }
    return {"attrs": attrs, "tensors": tensors}


def _fits(shape: Any, old: torch.Tensor) -> bool:
    if not (isinstance(shape, list) and len(shape) == old.dim() and all(type(n) is int and n >= 0 for n in shape)):
        return False
    return math.prod(shape) <= max(old.numel(), MAX_GROWN)


def _is_primitive(value: Any) -> bool:
    if isinstance(value, tuple | list):
        return all(isinstance(v, _PRIMITIVES) for v in value)
    return isinstance(value, _PRIMITIVES)
