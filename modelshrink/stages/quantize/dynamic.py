"""Dynamic int8: int8 weights, activations quantized on the fly (Linear/LSTM/GRU), int8 embedding tables.

Backend: `torch.ao.quantization.quantize_dynamic` (fbgemm/x86 kernels). Measured on a 2-core CPU
(docs/quantization.md) it ran a Linear-heavy model 1.5-2.2x faster than fp32, while torchao's int8
tensor subclasses ran 8-25x slower in eager mode and ~20x slower under torch.compile. torch.ao is
deprecated: its use and its warnings stay in this module.

Activations stay at torch.ao's 7 bits (`reduce_range=True`): with all 8 bits, fbgemm's int16 pair
sums saturate on CPUs without VNNI (measured here: max output error 0.19 vs 0.006 on a small model).
Per-tensor activation ranges suffer from a few outlier channels (transformers): `smoothing: alpha`
applies SmoothQuant (Xiao et al., 2023) first, dividing each input channel by
s = max|x|^alpha / max|w|^(1 - alpha) and multiplying the weight's columns by s. Hand-written
because torchao's SmoothQuant yields its tensor subclasses, slower than fp32 here, and
llm-compressor's needs its own model stack. The division stays an explicit multiply (`SmoothedLinear`):
folding it into the previous LayerNorm is only exact when nothing else reads that output, and in
post-LayerNorm models such as BERT the residual path does.
`ContiguousEmbedding` fills a gap no library fills: the int8 embedding kernel rejects strided index
tensors that the float table accepts (e.g. Hugging Face's expanded `token_type_ids` buffer).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modelshrink.errors import UserError
from modelshrink.hooks import forward_hooks
from modelshrink.inputs import Inputs, call
from modelshrink.lineage import Transform
from modelshrink.quiet import quiet
from modelshrink.recipe.stage_specs import DynamicQuantSpec
from modelshrink.registry import register
from modelshrink.stages.base import StageContext
from modelshrink.stages.quantize import choose
from modelshrink.stages.quantize.compiling import QuantizeStage
from modelshrink.stages.quantize.per_token import QuantizePerToken, int8_matmul_slowdown
from modelshrink.stages.selection import replace_each, select_modules

with quiet():  # torch.ao's deprecation notices
    import torch.ao.nn.quantized as nnq
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        float_qparams_weight_only_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )


class ContiguousEmbedding(nnq.Embedding):
    """An int8 embedding table that accepts strided indices, as the float one does."""

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return super().forward(indices.contiguous())


class SmoothedLinear(nn.Module):
    """`linear(x * inv_scale)`, where the linear's weight columns were multiplied by 1 / inv_scale."""

    def __init__(self, linear: nn.Module, in_features: int) -> None:
        super().__init__()
        self.register_buffer("inv_scale", torch.ones(in_features))
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.inv_scale)


# per_token's int8 matmul may take this many times the float32 one's and still be tried (it fuses when compiled)
MAX_INT8_MATMUL_SLOWDOWN = 2.0
SMOOTHING_GRID = (0.5, 0.7, 0.85)  # SmoothQuant's paper finds 0.5-0.85 best across models


@dataclass(frozen=True)
class Plan:
    """One variant of this stage: SmoothQuant's alpha (None: none) and the Linear activation scales."""

    alpha: float | None
    activations: str  # per_token | per_tensor

    @property
    def name(self) -> str:
        smoothing = f", SmoothQuant {self.alpha}" if self.alpha is not None else ""
        return f"{self.activations}{smoothing}"


@register(DynamicQuantSpec)
class DynamicQuantize(QuantizeStage):
    spec: DynamicQuantSpec

    def quantize(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        spec = self.spec
        selected = select_modules(model, ["*"], spec.exclude, spec.module_types)
        if not selected:
            raise UserError(f"no {'/'.join(spec.module_types)} layer left to quantize (exclude={spec.exclude})")
        names = [name for name, _ in selected]
        linears = [name for name, module in selected if isinstance(module, nn.Linear)]
        alphas = SMOOTHING_GRID if spec.smoothing == "auto" else (spec.smoothing,)
        modes = self._activation_modes(ctx) if linears else (spec.activations,)
        plans = [Plan(alpha if linears else None, mode) for alpha in alphas for mode in modes]
        batches = list(ctx.calibration_inputs(spec.calibration_batches)) if spec.smoothing or len(plans) > 1 else []
        # ranges from the first half of the calibration batches, choices judged on the other half
        fit, judge = (
            (batches[: len(batches) // 2], batches[len(batches) // 2 :]) if len(batches) > 1 else (batches,) * 2
        )
        ranges = input_ranges(model, linears, fit) if spec.smoothing is not None and linears else {}
        plan = plans[0]
        if len(plans) > 1:
            candidates = {p.name: self._build(copy.deepcopy(model), p, names, linears, ranges) for p in plans}
            findings = ctx.notes_for(self.name).findings
            chosen = choose.choose("dynamic int8 variant", model, candidates, judge, findings, ctx.deployed_inputs())
            plan = next(p for p in plans if p.name == chosen)
            resolved = ctx.notes_for(self.name).resolved
            if spec.smoothing == "auto":
                resolved["smoothing"] = plan.alpha
        if spec.activations == "auto" and linears:
            ctx.notes_for(self.name).resolved["activations"] = plan.activations
        return self._build(model, plan, names, linears, ranges, ctx.transform)

    def _activation_modes(self, ctx: StageContext) -> tuple[str, ...]:
        """The activation scales to try: `auto` tries per_token only where the CPU's int8 matmul is not
        far slower than its float32 one (it could not win, and timing it would take minutes)."""
        if self.spec.activations != "auto":
            return (self.spec.activations,)
        slowdown = int8_matmul_slowdown()
        if slowdown <= MAX_INT8_MATMUL_SLOWDOWN:
            return ("per_token", "per_tensor")
        ctx.notes_for(self.name).findings.append(
            f"activations auto: per_token not tried, as torch's int8 matmul ran {slowdown:.1f}x slower than "
            "float32's on this CPU (no VNNI int8 kernels); per_tensor uses PyTorch's own int8 kernels"
        )
        return ("per_tensor",)

    def _build(
        self,
        model: nn.Module,
        plan: Plan,
        names: list[str],
        linears: list[str],
        ranges: dict[str, torch.Tensor],
        transform: Callable[[nn.Module, Transform], nn.Module] = lambda model, t: t.replay(model),
    ) -> nn.Module:
        """The model under `plan`; `transform` applies (and, for the real model, records) each change."""
        if plan.alpha is not None:
            model = transform(model, SmoothLinear(linears))
            set_smoothing(model, linears, plan.alpha, ranges)
            names = [f"{name}.linear" if name in linears else name for name in names]
            linears = [f"{name}.linear" for name in linears]
        if plan.activations == "per_token" and linears:
            model = transform(model, QuantizePerToken(linears))
            names = [name for name in names if name not in linears]
        if names:
            model = transform(model, QuantizeDynamic(names, "qint8", self.spec.per_channel))
        return model


def input_ranges(model: nn.Module, names: list[str], batches: Iterable[Inputs]) -> dict[str, torch.Tensor]:
    """Per input channel, the largest |activation| each of `names` sees on `batches`."""
    modules = dict(model.named_modules())
    ranges: dict[str, torch.Tensor] = {}

    def observe(name: str) -> Any:
        def hook(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            seen = inputs[0].detach().abs().flatten(0, -2).amax(dim=0)
            ranges[name] = torch.maximum(ranges[name], seen) if name in ranges else seen

        return hook

    with forward_hooks(((modules[name], observe(name)) for name in names), pre=True), torch.inference_mode():
        for inputs in batches:
            call(model, inputs)
    return ranges


def set_smoothing(model: nn.Module, names: list[str], alpha: float, ranges: dict[str, torch.Tensor]) -> None:
    """Scale each wrapped Linear: s = max|x|^alpha / max|w|^(1 - alpha); weight columns x s, inputs / s."""
    modules = dict(model.named_modules())
    for name in names:
        wrapper, weight = modules[name], modules[name].linear.weight
        scale = ranges[name].clamp(min=1e-5) ** alpha / weight.detach().abs().amax(dim=0).clamp(min=1e-5) ** (1 - alpha)
        scale = scale.clamp(min=1e-5)
        with torch.no_grad():
            weight.mul_(scale)
            wrapper.inv_scale.copy_(1 / scale)


@dataclass(frozen=True)
class SmoothLinear(Transform, kind="smooth_linear"):
    """These Linear layers divide their inputs by per-channel scales (`SmoothedLinear`)."""

    modules: list[str]

    def replay(self, model: nn.Module) -> nn.Module:
        return replace_each(model, self.modules, lambda linear: SmoothedLinear(linear, linear.in_features))


@dataclass(frozen=True)
class QuantizeDynamic(Transform, kind="quantize_dynamic", keeps_float=False):
    """These modules became torch.ao dynamic int8 ones (embeddings: int8 tables)."""

    modules: list[str]
    dtype: str = "qint8"
    per_channel: bool = False  # records written before per_channel existed meant per-tensor weights

    def replay(self, model: nn.Module) -> nn.Module:
        linear_qconfig = per_channel_dynamic_qconfig if self.per_channel else default_dynamic_qconfig
        modules = dict(model.named_modules())
        qconfigs = {}
        for name in self.modules:
            if isinstance(modules[name], nn.Embedding):
                qconfigs[name] = float_qparams_weight_only_qconfig
            elif isinstance(modules[name], nn.Linear):
                qconfigs[name] = linear_qconfig
            else:
                qconfigs[name] = default_dynamic_qconfig
        with quiet():  # torch.ao's deprecation notices
            model = quantize_dynamic(model.eval(), qconfigs, dtype=getattr(torch, self.dtype))
        for module in model.modules():
            if type(module) is nnq.Embedding:
                module.__class__ = ContiguousEmbedding
        return model
