"""The shared shape of a quantization handler: build the quantized model, then compile it where it pays.

Whether a quantized model should run compiled is the same question for every mode (`compile:` on
every quantize spec), so it is answered here once: `true` always, `false` never, `auto` when the model
only pays off compiled (`needs_compiler`: PT2E int8) or, when it holds modules that may gain from it
(`gains_compiled`: per-token int8, half precision), when compiled measures faster than eager on the
calibration batches with the same outputs (`choose.choose`; compile time is not in the timing).
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from typing import Any

from torch import nn

from modelshrink.compiled import Compile, Compiled
from modelshrink.errors import UserError
from modelshrink.metrics.drop import OutputDrop
from modelshrink.stages.base import Stage, StageContext
from modelshrink.stages.quantize import choose, mixed

EAGER, COMPILED = "eager", "compiled (inductor, freezing)"
JUDGING_BATCHES = 2


class QuantizeStage(Stage[Any]):
    def apply(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        if getattr(self.spec, "mixed", None) is not None:
            kept, findings = mixed.keep_sensitive(self, model, ctx)
            ctx.notes_for(self.name).findings.extend(findings)
            self.spec = self.spec.keeping(kept)
        if getattr(self.spec, "min_cosine", None) is not None:
            model = self._quantize_within_floor(model, ctx)
        else:
            model = self.quantize(model, ctx)
        wanted = self.spec.compile
        if wanted == "auto" and not getattr(model, "needs_compiler", False):
            if not any(getattr(module, "gains_compiled", False) for module in model.modules()):
                return model
            model, wanted = self._faster_of_eager_and_compiled(model, ctx)
        if wanted:
            model = ctx.transform(model, Compile())
            ctx.notes_for(self.name).findings.append(
                "runs through torch.compile (inductor, freezing) as deployed: its latency is the compiled "
                "model's; a reload runs the compiled package the run writes beside the checkpoint where it may, "
                "else compiles again on its first call"
            )
        return model

    def _quantize_within_floor(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        """`min_cosine`: quantize the whole model; where its cosine to the float model (the worst output's) on
        calibration batches falls below the floor, quantize again keeping the most sensitive layers float
        (`mixed.keep_sensitive`), or fail in one line when no set of them can."""
        floor = self.spec.min_cosine
        untouched, transforms = copy.deepcopy(model), list(ctx.lineage.transforms)
        notes = ctx.notes_for(self.name)
        findings, resolved = list(notes.findings), dict(notes.resolved)
        drop = OutputDrop(untouched, list(ctx.calibration_inputs(mixed.JUDGING_BATCHES)), classification=False)
        quantized = self.quantize(model, ctx)
        cosine = 1 - drop(quantized)
        if cosine >= floor:
            notes.findings.append(f"cosine to float on the calibration data {cosine:.4f} >= min_cosine {floor:g}")
            return quantized
        # the first attempt is discarded whole: its transforms and what it noted
        ctx.lineage.transforms[:] = transforms
        notes.findings[:], notes.resolved = findings, resolved
        kept, ranking = mixed.keep_sensitive(self, untouched, ctx, floor=floor)
        notes.findings += [f"cosine to float on the calibration data {cosine:.4f} < min_cosine {floor:g}", *ranking]
        self.spec = self.spec.keeping(kept)
        quantized = self.quantize(untouched, ctx)
        final = 1 - drop(quantized)
        if final < floor:  # the trials ran eager; the kept build (another backend, compiled) must meet it too
            raise UserError(f"min_cosine: with {', '.join(kept)} float the model reaches {final:.4f} < {floor:g}")
        return quantized

    def _faster_of_eager_and_compiled(self, model: nn.Module, ctx: StageContext) -> tuple[nn.Module, bool]:
        compiled = Compiled(model)
        batches = list(ctx.calibration_inputs(JUDGING_BATCHES))
        notes = ctx.notes_for(self.name)
        chosen = choose.choose(
            "execution", model, {EAGER: model, COMPILED: compiled}, batches, notes.findings, ctx.deployed_inputs()
        )
        notes.resolved["compile"] = chosen == COMPILED
        return (compiled, True) if chosen == COMPILED else (model, False)

    @abstractmethod
    def quantize(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        """The quantized model (in place or a new module), still eager."""
