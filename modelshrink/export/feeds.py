"""What every runtime's export shares about a model's inputs: which axes stay dynamic, and how a
PyTorch call's arguments become the named arrays a runtime takes."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def dynamic_axes(value: torch.Tensor, batch: Any, sequence: Any) -> dict[int, Any]:
    """The batch dimension of every input; the sequence dimension of token ids and masks too."""
    integer = not value.is_floating_point() and value.dim() >= 2
    return {0: batch, 1: sequence} if integer else {0: batch}


def feeds(names: list[str], inputs: tuple[Any, ...], named: dict[str, Any]) -> dict[str, Any]:
    """A runtime's inputs from a call's arguments: in order, or by name for keyword inputs (token ids, masks)."""
    if named and all(name in named for name in names):
        return {name: named[name].detach().cpu().numpy() for name in names}
    values = [*inputs, *named.values()]
    return {name: value.detach().cpu().numpy() for name, value in zip(names, values, strict=False)}


def is_transformer(model: nn.Module) -> bool:
    """Whether `model` holds a Hugging Face transformer (runtimes quantize those with their own presets)."""
    return any(hasattr(getattr(module, "config", None), "num_attention_heads") for module in model.modules())
