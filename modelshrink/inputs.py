"""Model inputs in the three forms a data source may yield: a tensor, a tuple of tensors (positional
arguments) or a dict of tensors (keyword arguments, e.g. `input_ids` + `attention_mask`).

Every place that runs a model (metrics, latency, MACs, calibration, BatchNorm recalibration,
distillation, export, the model/data fit check) calls it through `call`, so a multi-input model works
everywhere a single-tensor one does. Outputs come in any nesting of tensors too (a detection head's
boxes and scores); `output_matrix` flattens them per sample for output-level metrics. A leaf module:
imports torch only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

Inputs = torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor] | dict[str, torch.Tensor]


def call(model: nn.Module, inputs: Inputs) -> Any:
    """Run `model` on one batch: a dict as keyword arguments, a tuple or list as positional ones."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


def as_args(inputs: Inputs) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, kwargs) for APIs that take them apart, such as torch.export."""
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, tuple | list):
        return tuple(inputs), {}
    return (inputs,), {}


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], inputs: Any) -> Any:
    """`fn` applied to every tensor in a (nested) batch, its structure kept."""
    return tree_map(lambda x: fn(x) if isinstance(x, torch.Tensor) else x, inputs)


def has_integer_inputs(inputs: Any) -> bool:
    """Whether any input is not floating point (token ids, masks)."""
    return any(isinstance(x, torch.Tensor) and not x.is_floating_point() for x in tree_flatten(inputs)[0])


def batch_size(inputs: Any) -> int:
    """The batch dimension: that of the first tensor found."""
    for leaf in tree_flatten(inputs)[0]:
        if isinstance(leaf, torch.Tensor) and leaf.dim() > 0:
            return int(leaf.shape[0])
    raise ValueError("the batch holds no tensor with a batch dimension")


def resized(inputs: Any, size: int) -> Any:
    """The batch cut or repeated (cycling through its samples) to `size` samples, copied."""
    have = batch_size(inputs)
    repeats = -(-size // have)
    return map_tensors(lambda x: x.repeat(repeats, *[1] * (x.dim() - 1))[:size].clone(), inputs)


def describe(inputs: Any) -> str:
    """A short description for messages: `(2, 3, 224, 224)` or `{input_ids: (2, 128), ...}`."""
    if isinstance(inputs, torch.Tensor):
        return str(tuple(inputs.shape))
    if isinstance(inputs, dict):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in inputs.items()) + "}"
    if isinstance(inputs, tuple | list):
        return "(" + ", ".join(describe(v) for v in inputs) + ")"
    return type(inputs).__name__


def output_matrix(outputs: Any) -> torch.Tensor:
    """Every tensor in the outputs, flattened per sample and joined: (batch, features) in float32.

    Cosine and output-error metrics then apply to any head: logits, embeddings, boxes + scores.
    Tensors without the batch dimension in front (e.g. a scalar) are left out."""
    leaves = [x for x in tree_flatten(outputs)[0] if isinstance(x, torch.Tensor) and x.dim() > 0]
    if not leaves:
        raise ValueError(f"the model's output holds no tensor ({type(outputs).__name__})")
    rows = leaves[0].shape[0]
    return torch.cat([x.float().reshape(rows, -1) for x in leaves if x.shape[0] == rows], dim=1)


def output_names(outputs: Any) -> list[str]:
    """The name of each tensor `output_matrix` joins, in its order: the keys on the path into the outputs
    joined by dots (`boxes`, `0`, `0.scores`), or `output` for a model with one output tensor. Keys that
    join to the same name (`{"a.b": x, "a": {"b": y}}`) are named by their exact paths (`['a.b']`)
    instead, so that every output has a name of its own to be reported and gated by."""
    from torch.utils._pytree import keystr, tree_flatten_with_path

    leaves = [(path, x) for path, x in tree_flatten_with_path(outputs)[0] if isinstance(x, torch.Tensor) and x.dim()]
    if not leaves:
        return []
    rows = leaves[0][1].shape[0]
    paths = [path for path, x in leaves if x.shape[0] == rows]
    names = [_plain_key(path) for path in paths]
    if names == [""]:
        return ["output"]
    if len(set(names)) < len(names) or "" in names:
        names = [keystr(path) for path in paths]
    if len(set(names)) < len(names):  # keys whose reprs collide too: their positions tell them apart
        names = [f"{name}#{index}" for index, name in enumerate(names)]
    return names


def _plain_key(path: tuple[Any, ...]) -> str:
    """The keys on a pytree path, joined by dots: `['boxes']` -> `boxes`, `[0]['scores']` -> `0.scores`,
    `.logits` -> `logits`; a key's own dots and brackets are kept as they are."""
    return ".".join(str(getattr(entry, "key", getattr(entry, "idx", getattr(entry, "name", entry)))) for entry in path)


def output_widths(outputs: Any) -> list[int]:
    """How many columns of `output_matrix` each named output (`output_names`) takes."""
    leaves = [x for x in tree_flatten(outputs)[0] if isinstance(x, torch.Tensor) and x.dim() > 0]
    if not leaves:
        return []
    rows = leaves[0].shape[0]
    return [x[0].numel() for x in leaves if x.shape[0] == rows]


def logits(outputs: Any) -> torch.Tensor | None:
    """The output as (batch, classes) logits, or None when it is not one 2-D tensor."""
    if isinstance(outputs, torch.Tensor) and outputs.dim() == 2:
        return outputs.float()
    return None


def signature(inputs: Inputs) -> dict[str, Any]:
    """What a batch looks like without its batch size, in plain types a checkpoint can record:
    `{"args": [[shape, dtype], ...], "kwargs": {name: [shape, dtype]}}`."""

    def leaf(x: torch.Tensor) -> list[Any]:
        return [list(x.shape[1:]), str(x.dtype).removeprefix("torch.")]

    args, kwargs = as_args(inputs)
    return {"args": [leaf(x) for x in args], "kwargs": {k: leaf(v) for k, v in kwargs.items()}}


def zeros(signature: dict[str, Any], batch: int) -> Inputs:
    """A batch of zeros of a recorded `signature`, in the form it was recorded from."""

    def leaf(spec: list[Any]) -> torch.Tensor:
        return torch.zeros(batch, *spec[0], dtype=getattr(torch, spec[1]))

    if signature["kwargs"]:
        return {k: leaf(v) for k, v in signature["kwargs"].items()}
    args = [leaf(v) for v in signature["args"]]
    return args[0] if len(args) == 1 else tuple(args)
