"""Choosing layers by name pattern and module type, shared by every stage that targets layers."""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from torch import nn

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
