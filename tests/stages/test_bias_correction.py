"""Bias correction on static int8: the mean shift rounded weights cause is computed as each layer applies
its weights (padding, stride, groups) and cancelled, and the corrected bias reloads from the checkpoint."""

from __future__ import annotations

import torch
from torch import nn

from modelshrink.engine import compress
from modelshrink.stages.quantize import bias_correction
from tests.conftest import FAST_EVAL, tensor_data


def test_the_shift_is_the_layers_own_output_mean_for_its_weight_error() -> None:
    """A grouped, strided, padded convolution and a linear layer over a sequence: the shift from the mean
    input equals the mean of the layer applied to every input with the weight error."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4)
    linear = nn.Linear(6, 5)
    means = bias_correction.InputMeans()
    means.layers.update(conv=conv, linear=linear)
    images, tokens = [torch.rand(4, 8, 9, 9) + 2 for _ in range(3)], [torch.randn(4, 7, 6) + 1 for _ in range(3)]
    for image, token in zip(images, tokens, strict=True):
        means.add("conv", image)
        means.add("linear", token)
    conv_error, linear_error = torch.randn_like(conv.weight) * 1e-2, torch.randn_like(linear.weight) * 1e-2
    applied = torch.cat([conv._conv_forward(x, conv_error, None) for x in images]).mean((0, 2, 3))
    torch.testing.assert_close(means.shift("conv", conv_error), applied, rtol=1e-4, atol=1e-6)
    applied = torch.cat([x @ linear_error.T for x in tokens]).mean((0, 1))
    torch.testing.assert_close(means.shift("linear", linear_error), applied, rtol=1e-4, atol=1e-6)
    means.add("conv", torch.rand(4, 8, 5, 5))
    assert "conv" not in means.sums, "inputs of another size have no one mean: the layer is left as it is"


class DepthwiseNet(nn.Module):
    """A depthwise convolution whose per-tensor int8 scale is set by one large weight (over a channel
    that is nearly zero, so it does not set the activations' ranges), so the other channels' small
    weights round coarsely, over inputs far from zero: rounding shifts its outputs' mean."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pointwise = nn.Conv2d(16, 8, 1)
        with torch.no_grad():
            self.depthwise.weight.uniform_(0.0, 0.02)
            self.depthwise.weight[0] = 4.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x)).mean((2, 3))


def inputs(count: int) -> torch.Tensor:
    x = torch.rand(count, 16, 8, 8) + 4.0
    x[:, 0] *= 0.001
    return x


def test_bias_correction_cancels_the_mean_shift_and_reloads() -> None:
    torch.manual_seed(1)
    x, held_out = inputs(128), inputs(64)
    data = tensor_data(x, labeled=False, class_targets=False)
    float_out = DepthwiseNet().eval()(held_out).detach()

    def int8(corrected: bool):
        stage = {"kind": "quantize", "mode": "static", "backend": "fx", "per_channel": False,
                 "bias_correction": corrected}  # fmt: skip
        return compress(DepthwiseNet(), [stage], data=data, evaluate=FAST_EVAL)

    plain, corrected = int8(False), int8(True)
    shift = {name: (r.model(held_out) - float_out).mean(0).abs().mean().item() for name, r in
             (("plain", plain), ("corrected", corrected))}  # fmt: skip
    assert shift["corrected"] < shift["plain"] / 4, shift
    assert corrected.stages[0].metrics["cosine"] > plain.stages[0].metrics["cosine"]
    findings = corrected.stages[0].notes.findings
    assert any(f.startswith("bias correction: 2 int8 layers' biases shifted back") for f in findings), findings
    assert not any(f.startswith("bias correction") for f in plain.stages[0].notes.findings)
    reloaded = corrected.lineage.transforms[0].replay(DepthwiseNet().eval())  # as a checkpoint rebuilds
    reloaded.load_state_dict(corrected.model.state_dict())
    assert torch.equal(reloaded(held_out), corrected.model(held_out)), "the corrected bias is saved"
