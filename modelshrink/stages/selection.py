"""Choosing layers by name pattern and module type, shared by every stage that targets layers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from modelshrink.hooks import forward_hooks
from modelshrink.inputs import Inputs, call

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """Whether a module name matches one of the glob patterns of a recipe (`layer4.*`, `fc`)."""
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def select_modules(
    model: nn.Module, include: Iterable[str], exclude: Iterable[str], types: Iterable[str]
) -> list[tuple[str, nn.Module]]:
    """Modules whose type name is in `types`, whose name matches an `include` glob and no `exclude` glob."""
    include, exclude, types = list(include), list(exclude), set(types)
    return [
        (name, module)
        for name, module in model.named_modules()
        if name and type(module).__name__ in types and matches_any(name, include) and not matches_any(name, exclude)
    ]


def find_classifier(model: nn.Module) -> str:
    """Name of the output layer: the last Linear, or the last Conv for all-convolutional heads."""
    for types in ((nn.Linear,), (nn.Conv2d, nn.Conv1d)):
        names = [name for name, module in model.named_modules() if isinstance(module, types)]
        if names:
            return names[-1]
    raise ValueError("no Linear or Conv layer found to act as the classifier")


def output_layers(model: nn.Module, example: Inputs, types: tuple[type[nn.Module], ...]) -> set[str]:
    """Layers of `types` whose outputs reach the model's outputs through no other such layer: a
    classifier, a box head, a score head. Their output channels are what the user reads, so channel
    pruning must leave them whole. Found by walking the autograd graph back from every output tensor
    (it sees through activations, views, adds and concatenations), for any output nesting."""
    produced_by: dict[Any, str] = {}

    def record(name: str) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.grad_fn is not None:
                produced_by[output.grad_fn] = name

        return hook

    layers = [(m, record(n)) for n, m in model.named_modules() if n and isinstance(m, types)]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for param in frozen:
        param.requires_grad_(True)
    try:
        with forward_hooks(layers), torch.enable_grad():
            outputs = call(model.eval(), example)
    finally:
        for param in frozen:
            param.requires_grad_(False)
    found: set[str] = set()
    stack = [leaf.grad_fn for leaf in tree_flatten(outputs)[0] if isinstance(leaf, torch.Tensor)]
    seen: set[Any] = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node in produced_by:
            found.add(produced_by[node])
            continue
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


def sequential_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every non-leaf child of an nn.Sequential that holds parameters, in forward order, nested ones
    included (ResNet bottlenecks, MobileNet/EfficientNet inverted residuals and their stages)."""
    found = []
    for parent_name, parent in model.named_modules():
        if isinstance(parent, nn.Sequential):
            for child_name, child in parent.named_children():
                if any(True for _ in child.children()) and any(True for _ in child.parameters()):
                    found.append((f"{parent_name}.{child_name}" if parent_name else child_name, child))
    return found


def blocks(model: nn.Module) -> list[str]:
    """The model's outermost blocks in forward order; leaf layers with parameters for flat models."""
    found: list[str] = []
    for name, _ in sequential_blocks(model):
        if not any(name.startswith(f"{b}.") for b in found):
            found.append(name)
    if found:
        return found
    return [
        name
        for name, m in model.named_modules()
        if name and not any(True for _ in m.children()) and any(True for _ in m.parameters(recurse=False))
    ]


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def replace_each(model: nn.Module, names: Iterable[str], make: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Each named module swapped for `make(module)`: how the transforms that wrap layers replay."""
    for name in names:
        set_submodule(model, name, make(model.get_submodule(name)))
    return model
