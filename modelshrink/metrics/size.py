"""Parameters, non-zeros, sparsity and MACs, counted the same way for float and quantized modules.

Quantized modules keep their weights behind `weight()`/`bias()` methods instead of Parameters, so
`model.parameters()` would report an int8 Linear as having no weights; `module_tensors` looks behind.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modelshrink.hooks import forward_hooks
from modelshrink.inputs import Inputs, call
from modelshrink.sparse_storage import file_bytes


@dataclass(frozen=True)
class TensorEntry:
    module: str
    module_type: str
    name: str
    tensor: torch.Tensor
    is_param: bool

    @property
    def nonzero(self) -> int:
        t = self.tensor.dequantize() if self.tensor.is_quantized else self.tensor
        return int(torch.count_nonzero(t).item())

    @property
    def nbytes(self) -> int:
        return self.tensor.numel() * self.tensor.element_size()


def nonfinite_names(entries: Iterable[TensorEntry]) -> list[str]:
    """Names of the float tensors that hold NaN or Inf: a model with them computes garbage silently."""
    names = []
    for entry in entries:
        tensor = entry.tensor.dequantize() if entry.tensor.is_quantized else entry.tensor
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            names.append(entry.name)
    return names


_FROZEN_PARAM = re.compile(r"_frozen_param\d+")


def _packed_weights(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Weights that are not Parameters: torch.ao's quantized modules expose `weight()` / `bias()`
    methods, and torch.export's converted int8 graphs keep their weights as `_frozen_param<N>` buffers."""
    for attr in ("weight", "bias"):
        getter = getattr(module, attr, None)
        if callable(getter) and not isinstance(getter, torch.Tensor):
            value = getter()
            if isinstance(value, torch.Tensor):
                yield attr, value
    for name, buffer in module.named_buffers(recurse=False):
        if _FROZEN_PARAM.fullmatch(name):
            yield name, buffer


def _graph_layers(module: nn.Module) -> dict[str, tuple[str, str]]:
    """For an exported int8 graph: each frozen weight's layer (path and type in the model it was exported
    from), read from the op that consumes it after its dequantize, so that `inspect` and the report show
    one row per quantized layer instead of one row for the whole graph."""
    graph = getattr(module, "graph", None)
    if not isinstance(graph, torch.fx.Graph):
        return {}
    layers = {}
    for node in graph.nodes:
        if node.op != "get_attr" or not _FROZEN_PARAM.fullmatch(str(node.target)):
            continue
        frontier = list(node.users)
        for _ in range(3):  # dequantize (maybe a view), then the layer
            reader = next((user for user in frontier if user.meta.get("nn_module_stack")), None)
            if reader is not None:
                path, kind = list(reader.meta["nn_module_stack"].values())[-1]
                layers[str(node.target)] = (str(path), str(kind).rpartition(".")[2])
                break
            frontier = [later for user in frontier for later in user.users]
    return layers


def module_tensors(model: nn.Module) -> Iterator[TensorEntry]:
    for module_name, module in model.named_modules():
        kind = type(module).__name__
        prefix = f"{module_name}." if module_name else ""
        params = list(module.named_parameters(recurse=False))
        own = {name for name, _ in params}
        packed = [(name, tensor) for name, tensor in _packed_weights(module) if name not in own]
        for name, tensor in params:
            yield TensorEntry(module_name, kind, prefix + name, tensor.detach(), True)
        layers = _graph_layers(module) if packed else {}
        for name, tensor in packed:
            layer, layer_kind = layers.get(name, ("", kind))
            owner = f"{prefix}{layer}" if layer else module_name
            yield TensorEntry(owner, layer_kind, prefix + name, tensor.detach(), True)
        seen = {id(tensor) for _, tensor in packed}  # a packed weight may also be a buffer: count it once
        for name, tensor in module.named_buffers(recurse=False):
            if id(tensor) not in seen:
                yield TensorEntry(module_name, kind, prefix + name, tensor, False)


def count_parameters(model: nn.Module) -> dict[str, float]:
    params = nonzero = 0
    for entry in module_tensors(model):
        if entry.is_param:
            params += entry.tensor.numel()
            nonzero += entry.nonzero
    return {"params": params, "nonzero_params": nonzero, "sparsity": 1.0 - nonzero / params if params else 0.0}


def count_macs(model: nn.Module, inputs: Inputs) -> int:
    """Multiply-accumulates of one forward pass (dense: zeros still cost a MAC in a dense kernel)."""
    from torch.utils.flop_counter import FlopCounterMode

    quantized_macs = 0

    def count_quantized(module: nn.Module, _args: object, output: torch.Tensor) -> None:
        nonlocal quantized_macs
        if not isinstance(output, torch.Tensor):
            return
        if hasattr(module, "in_features"):
            quantized_macs += output.numel() * module.in_features
        elif hasattr(module, "kernel_size"):
            per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
            quantized_macs += output.numel() * per_output

    # Only true quantized kernels are invisible to FlopCounterMode; other packed weights run through F.* ops.
    packed = [(m, count_quantized) for m in model.modules() if any(t.is_quantized for _, t in _packed_weights(m))]
    with forward_hooks(packed), FlopCounterMode(display=False) as counter, torch.inference_mode():
        call(model, inputs)
    return counter.get_total_flops() // 2 + quantized_macs


def layer_summary(model: nn.Module) -> list[dict[str, Any]]:
    """Per layer with a weight matrix: its name, type, weight count, sparsity, bits per weight, and the
    weight's bytes in memory and in model.pt (smaller where it is stored sparse)."""
    rows = []
    modules = dict(model.named_modules())
    for entry in module_tensors(model):
        if entry.is_param and entry.tensor.dim() > 1:  # weight matrices and kernels, not biases or norms
            numel = entry.tensor.numel()
            bits = getattr(modules.get(entry.module), "weight_bits", entry.tensor.element_size() * 8)
            rows.append({"name": entry.module, "type": entry.module_type, "params": numel,
                         "sparsity": 1 - entry.nonzero / numel, "bits": bits, "bytes": entry.nbytes,
                         "stored_bytes": file_bytes(entry.tensor)})  # fmt: skip
    return rows
