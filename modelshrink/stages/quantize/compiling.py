"""The shared shape of a quantization handler: build the quantized model, then compile it where asked.

Whether a quantized model should run compiled is the same question for every mode (`compile:` on
every quantize spec), so it is answered here once: `true` always, `auto` where the model declares
that it only pays off compiled (`needs_compiler`, e.g. PT2E int8), `false` never.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from torch import nn

from modelshrink.compiled import Compile
from modelshrink.stages.base import Stage, StageContext


class QuantizeStage(Stage[Any]):
    def apply(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        model = self.quantize(model, ctx)
        wanted = self.spec.compile
        if wanted is True or (wanted == "auto" and getattr(model, "needs_compiler", False)):
            model = ctx.transform(model, Compile())
            ctx.notes_for(self.name).findings.append(
                "runs through torch.compile (inductor, freezing) as deployed: its latency is the compiled "
                "model's, and loading the checkpoint compiles it again on the first call"
            )
        return model

    @abstractmethod
    def quantize(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        """The quantized model (in place or a new module), still eager."""
