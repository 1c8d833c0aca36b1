"""Static int8 (calibrated) and quantization-aware training: torch.ao's FX graph mode, or torch.export
+ torchao PT2E (`pt2e.py`), chosen per model (`_FxOrPt2e`).

FX traces the model, fuses conv-bn-relu, places observers and swaps in int8 kernels (x86/fbgemm)
that run fast in eager mode, with no hand-placed QuantStubs; torch.fx is deprecated, so it stays only
where it measurably wins (docs/quantization.md). A checkpoint rebuilds by replaying prepare + convert
on the float architecture (no calibration needed: the saved state holds the scales)."""

from __future__ import annotations

import copy
import functools
from abc import abstractmethod
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from modelshrink.compiled import Compiled
from modelshrink.errors import UserError, first_line
from modelshrink.inputs import Inputs, call, has_integer_inputs
from modelshrink.lineage import Lineage, Transform
from modelshrink.metrics.drop import OutputDrop
from modelshrink.quiet import quiet
from modelshrink.recipe.stage_specs import QatSpec, StaticQuantSpec
from modelshrink.registry import register
from modelshrink.stages.base import StageContext
from modelshrink.stages.quantize import bias_correction, choose, pt2e
from modelshrink.stages.quantize.compiling import QuantizeStage
from modelshrink.stages.selection import matches_any

JUDGED_BATCHES = 2  # calibration batches `observer: auto` judges on


class _FxOrPt2e(QuantizeStage):
    """Two int8 backends behind one interface: torch.ao FX, whose int8 kernels run fast in eager mode,
    and torch.export + PT2E, which captures models FX cannot trace and pays off compiled. `backend:
    auto` measures both on the calibration data where both capture the model (static int8; QAT would
    train twice) and keeps the better, quality first (issue #12 measured FX ahead on ResNets at batch
    16, compiled PT2E 3x ahead on EfficientNet-Lite0); `fx` or `pt2e` force one. Subclasses say how
    the observers see data."""

    def quantize(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        if self.spec.backend == "pt2e":
            return self._pt2e(model, ctx)
        if has_integer_inputs(ctx.data.example_inputs(1)):
            # FX observes every input its quantized consumers read, integer token ids and masks too,
            # which its histogram observers cannot take; PT2E's quantizer annotates float ops only.
            if self.spec.backend == "fx":
                raise UserError("backend fx cannot observe integer inputs (token ids, masks); use backend: pt2e")
            ctx.notes_for(self.name).findings.append(
                f"integer inputs: quantized through torch.export and PT2E{self._not_applied()}"
            )
            return self._pt2e(model, ctx)
        untouched = copy.deepcopy(model) if self._measures_both else None
        observer = getattr(self.spec, "observer", None)
        try:
            if observer == "auto":
                quantized, transform = self._closest_observer(model, ctx)
            else:
                transform = QuantizeFx.of(model, self.spec, ctx, observer=observer)
                quantized, corrected = self._fx_int8(model, transform, ctx)
                self._note_corrected(corrected, ctx)
        except UserError as exc:  # torch.fx could not trace the model
            if self.spec.backend == "fx" or "cannot trace" not in str(exc):
                raise
            ctx.notes_for(self.name).findings.append(
                f"{exc}; quantized through torch.export and PT2E instead (torchao's x86 defaults){self._not_applied()}"
            )
            return self._pt2e(untouched or model, ctx)
        if untouched is None:
            ctx.lineage.transforms.append(transform)
            return quantized
        return self._measured(untouched, quantized, transform, ctx)

    def _closest_observer(self, model: nn.Module, ctx: StageContext) -> tuple[nn.Module, QuantizeFx]:
        """`observer: auto`: FX int8 with histogram and with min/max activation ranges, judged by the worst
        output's cosine to float on calibration batches after those that set the ranges (on those same
        batches where the calibration data has no more); the closer one is kept and said."""
        # read once: the training loader reshuffles on every pass, and both builds must see the same batches
        judged = list(ctx.calibration_inputs(self.spec.calibration_batches + JUDGED_BATCHES))
        fit, judge = judged[: self.spec.calibration_batches], judged[self.spec.calibration_batches :] or judged
        drop = OutputDrop(model, judge, classification=False)
        built = {}
        for observer in ("histogram", "minmax"):
            transform = QuantizeFx.of(model, self.spec, ctx, observer=observer)
            quantized, corrected = self._fx_int8(copy.deepcopy(model), transform, ctx, fit)
            built[observer] = (1 - drop(quantized), quantized, transform, corrected)
        chosen = max(built, key=lambda name: built[name][0])
        held_out = (
            "held-out calibration batches" if len(judged) > self.spec.calibration_batches else "calibration batches"
        )
        ctx.notes_for(self.name).findings.append(
            f"activation observer chosen on {held_out}: {chosen} "
            f"({'; '.join(f'{name}: cosine {built[name][0]:.4f}' for name in built)})"
        )
        ctx.notes_for(self.name).resolved["observer"] = chosen
        self._note_corrected(built[chosen][3], ctx)
        return built[chosen][1], built[chosen][2]

    def _fx_int8(
        self, model: nn.Module, transform: QuantizeFx, ctx: StageContext, batches: list[Inputs] | None = None
    ) -> tuple[nn.Module, list[str]]:
        """Prepare, let the observers see data (these batches, or the stage's own), convert; static int8
        with `bias_correction` then cancels each layer's rounding shift: the names of the layers corrected."""
        prepared = prepare(model, transform)
        if not getattr(self.spec, "bias_correction", False):
            return convert(self._observe(prepared, ctx, batches)), []
        with bias_correction.watching(prepared) as means:
            self._observe(prepared, ctx, batches)
        quantized = convert(prepared)
        return quantized, bias_correction.correct(quantized, means)

    def _note_corrected(self, corrected: list[str], ctx: StageContext) -> None:
        if corrected:
            ctx.notes_for(self.name).findings.append(
                f"bias correction: {len(corrected)} int8 layers' biases shifted back by their weights' mean "
                "rounding error on the calibration batches"
            )

    def _not_applied(self) -> str:
        """For a finding where PT2E runs: the recipe's settings it does not apply, so none is lost unsaid."""
        ignored = self.spec.fx_only_settings()
        return f"; {', '.join(ignored)} not applied (the fx backend's alone)" if ignored else ""

    @property
    def _measures_both(self) -> bool:
        """Whether `backend: auto` builds both: static int8 with PT2E's own defaults, to run compiled."""
        spec = self.spec
        defaults = getattr(spec, "observer", None) == "histogram" and spec.per_channel
        return spec.backend == "auto" and spec.training is None and spec.compile is not False and defaults

    def _measured(self, untouched: nn.Module, fx_int8: nn.Module, fx: QuantizeFx, ctx: StageContext) -> nn.Module:
        """FX int8 or compiled PT2E int8, whichever is as close to float and faster on calibration data."""
        notes = ctx.notes_for(self.name)
        try:
            scratch = replace(ctx, lineage=Lineage(ctx.lineage.architecture, []))
            pt2e_int8 = Compiled(self._pt2e(copy.deepcopy(untouched), scratch))
        except UserError as exc:  # torch.export cannot capture what FX traced: FX it is
            notes.findings.append(f"FX int8 kept: {first_line(exc)}")
            ctx.lineage.transforms.append(fx)
            return fx_int8
        batches = list(ctx.calibration_inputs(self.spec.calibration_batches))
        candidates = {"FX (eager)": fx_int8, "PT2E (compiled)": pt2e_int8}
        if (
            choose.choose("int8 backend", untouched, candidates, batches, notes.findings, ctx.deployed_inputs())
            == "FX (eager)"
        ):
            notes.resolved["backend"] = "fx"
            ctx.lineage.transforms.append(fx)
            return fx_int8
        notes.resolved["backend"] = "pt2e"
        ctx.lineage.transforms += scratch.lineage.transforms
        return pt2e_int8

    def _pt2e(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        excluded = [name for name, _ in model.named_modules() if name and matches_any(name, self.spec.exclude)]
        observe = functools.partial(self._observe, ctx=ctx)
        qat = self.spec.training is not None
        quantized, transform = pt2e.quantize(model, ctx.data.example_inputs(2), excluded, observe, qat=qat)
        ctx.lineage.transforms.append(transform)
        return quantized

    @abstractmethod
    def _observe(self, prepared: nn.Module, ctx: StageContext, batches: list[Inputs] | None = None) -> nn.Module:
        """Let the prepared model's observers (or fake quantization) see data."""


@register(StaticQuantSpec)
class StaticQuantize(_FxOrPt2e):
    def _observe(self, prepared: nn.Module, ctx: StageContext, batches: list[Inputs] | None = None) -> nn.Module:
        """Calibrate: the observers record activation ranges on training batches (or these)."""
        with torch.no_grad():
            for inputs in batches if batches is not None else ctx.calibration_inputs(self.spec.calibration_batches):
                call(prepared, inputs)
        return prepared


@register(QatSpec)
class QatQuantize(_FxOrPt2e):
    def _observe(self, prepared: nn.Module, ctx: StageContext, batches: list[Inputs] | None = None) -> nn.Module:
        """Train with fake quantization, through the one training loop."""
        return ctx.train(prepared, self.spec.qat, self.name, label=f"{self.name} (quantization-aware training)")


@dataclass(frozen=True)
class QuantizeFx(Transform, kind="quantize_fx", keeps_float=False):
    """The model was traced and converted to int8 by torch.ao FX with these settings; replaying
    prepare + convert needs no calibration, as the saved state holds the scales."""

    mode: str  # static | qat
    observer: str | None
    per_channel: bool
    exclude: list[str]
    input_shape: list[int]
    only: list[str] | None = None  # just these modules (and none of the model's functional ops): analyze's probe

    @classmethod
    def of(
        cls, model: nn.Module, spec: StaticQuantSpec | QatSpec, ctx: StageContext, observer: str | None
    ) -> QuantizeFx:
        excluded = [name for name, _ in model.named_modules() if name and matches_any(name, spec.exclude)]
        return cls(spec.mode, observer, spec.per_channel, excluded, list(ctx.data.input_shape))

    def replay(self, model: nn.Module) -> nn.Module:
        return convert(prepare(model, self))


def convert(prepared: nn.Module) -> nn.Module:
    """Swap observed / fake-quantized modules for int8 kernels."""
    with quiet():  # torch.ao's deprecation notices
        from torch.ao.quantization.quantize_fx import convert_fx

        return convert_fx(prepared.eval())


def prepare(model: nn.Module, transform: QuantizeFx) -> nn.Module:
    """Trace the model and insert observers (static) or fake-quantization (qat)."""
    with quiet():  # torch.ao's deprecation notices
        from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx

        mapping = qconfig_mapping(transform)
        example = (torch.zeros(1, *transform.input_shape),)
        try:
            if transform.mode == "qat":
                return prepare_qat_fx(model.train(), mapping, example)
            return prepare_fx(model.eval(), mapping, example)
        except Exception as exc:  # symbolic tracing fails on data-dependent control flow and the like
            first = first_line(exc)
            raise UserError(
                f"cannot trace the model for {transform.mode} quantization (torch.fx: {first}); "
                "exclude the untraceable layers or use mode: dynamic"
            ) from None


def qconfig_mapping(transform: QuantizeFx) -> Any:
    from torch.ao.quantization import QConfig, QConfigMapping, get_default_qat_qconfig
    from torch.ao.quantization.observer import (
        HistogramObserver,
        MinMaxObserver,
        default_per_channel_weight_observer,
        default_weight_observer,
    )

    if transform.mode == "qat":
        qconfig = get_default_qat_qconfig("x86")
        if not transform.per_channel:
            from torch.ao.quantization.fake_quantize import default_weight_fake_quant

            qconfig = QConfig(activation=qconfig.activation, weight=default_weight_fake_quant)
    else:
        observer = HistogramObserver if transform.observer == "histogram" else MinMaxObserver
        weight = default_per_channel_weight_observer if transform.per_channel else default_weight_observer
        # reduce_range avoids int16 overflow in x86 kernels without VNNI, as torch's x86 default does
        qconfig = QConfig(activation=observer.with_args(reduce_range=True), weight=weight)
    # Embedding lookups take integer ids: an activation observer cannot watch them (histc on Long)
    # and static int8 has no kernel for them; they stay float, as the model's other float islands.
    if transform.only is not None:
        mapping = QConfigMapping()  # nothing quantized but the named modules
        for name in transform.only:
            mapping.set_module_name(name, qconfig)
        return mapping
    mapping = QConfigMapping().set_global(qconfig).set_object_type(nn.Embedding, None)
    for name in transform.exclude:
        mapping.set_module_name(name, None)
    return mapping
