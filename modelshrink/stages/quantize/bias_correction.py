"""Bias correction for static int8 (Nagel et al. 2019, "Data-Free Quantization", section 4.2): rounding a
layer's weights to int8 shifts the mean of its outputs by E[conv(x, W_q - W)], the same for every input
on average; subtracting that shift from the layer's bias cancels it. Depthwise convolutions (nine weights
per channel) and per-tensor scales make the shift large enough to move a detector's regression heads.

The shift is computed exactly from the mean input the float layer saw on the calibration batches (one
mean per input position for convolutions, so padding, stride and groups count as the layer applies
them; the layer is linear, so the mean of its outputs is the layer applied to the mean input).
Written by hand: torch.ao's `_correct_bias` works on eager-mode models only, FX's converted modules
are not matched by it, and it measures output means after any fused ReLU, where a shift is not linear.
The corrected bias lives in the quantized module's state, so a checkpoint reloads it with no replay."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _float_layer(module: nn.Module) -> nn.Module | None:
    """The float conv or linear inside a prepared FX module (fused ones hold it first: conv-relu)."""
    if isinstance(module, LAYERS):
        return module
    if isinstance(module, nn.Sequential) and len(module) and isinstance(module[0], LAYERS):
        return module[0]
    return None


class InputMeans:
    """The mean input of every float conv / linear of an FX-prepared model over the batches it sees."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.layers: dict[str, nn.Module] = {}
        self.ragged: set[str] = set()  # input shapes that changed between batches: no single mean

    def add(self, name: str, x: torch.Tensor) -> None:
        if name in self.ragged or not x.is_floating_point():
            return
        x = x.detach().float()
        if isinstance(self.layers[name], nn.Linear):
            x = x.reshape(-1, x.shape[-1])  # one mean per input feature, over batch and sequence
        # a convolution's mean per channel and position: the padding's zeros count where they fall
        total, count = x.sum(0), x.shape[0]
        if name in self.sums and self.sums[name].shape != total.shape:
            self.ragged.add(name)
            del self.sums[name]
            return
        self.sums[name] = self.sums.get(name, 0) + total
        self.counts[name] = self.counts.get(name, 0) + count

    def shift(self, name: str, weight_error: torch.Tensor) -> torch.Tensor:
        """E[layer(x, W_q - W)] per output channel: how far rounding moved the layer's outputs on average."""
        layer, mean = self.layers[name], self.sums[name] / self.counts[name]
        if isinstance(layer, nn.Linear):
            return weight_error @ mean
        out = layer._conv_forward(mean.unsqueeze(0), weight_error, None)  # padding, stride, groups as the layer's
        return out.flatten(2).mean(2).squeeze(0)


@contextmanager
def watching(prepared: nn.Module) -> Iterator[InputMeans]:
    """Record each float conv / linear's mean input while the observers calibrate."""
    means, handles = InputMeans(), []
    for name, module in prepared.named_modules():
        layer = _float_layer(module)
        if layer is None:
            continue
        means.layers[name] = layer
        handles.append(module.register_forward_pre_hook(lambda _, args, name=name: means.add(name, args[0])))
    try:
        yield means
    finally:
        for handle in handles:
            handle.remove()


def correct(quantized: nn.Module, means: InputMeans) -> list[str]:
    """Subtract each int8 layer's rounding shift from its bias; the names of the layers corrected."""
    corrected = []
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if name not in means.sums or not hasattr(module, "set_weight_bias"):
                continue  # kept float (excluded), or its input shape varied between batches
            weight = module.weight()
            error = weight.dequantize() - means.layers[name].weight.detach().float()
            bias = module.bias()
            shift = means.shift(name, error)
            module.set_weight_bias(weight, (bias if bias is not None else torch.zeros_like(shift)) - shift)
            corrected.append(name)
    return corrected
