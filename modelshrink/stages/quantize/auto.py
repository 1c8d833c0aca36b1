"""`mode: auto`: try each candidate mode on this CPU and keep the fastest that meets the quality bar.

What pays off depends on the CPU: int8 on VNNI/AMX, bf16 on AVX512_BF16/AMX, while fp16 on a CPU
without native fp16 arithmetic runs slower than fp32 (issue #12 measured 3-4x slower). So the choice
is measured, not assumed: each candidate is built on a copy, timed and compared with the float model
on the calibration batches (never the validation split), and the table goes into the report.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from torch import nn

from modelshrink.environment import cpu_summary
from modelshrink.errors import UserError, first_line
from modelshrink.lineage import Lineage
from modelshrink.recipe.stage_specs import AutoQuantSpec
from modelshrink.registry import register
from modelshrink.stages.base import Stage, StageContext, handler_for
from modelshrink.stages.quantize import choose

FLOAT = "fp32 (unchanged)"


@register(AutoQuantSpec)
class AutoQuantize(Stage[AutoQuantSpec]):
    def apply(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        built: dict[str, tuple[nn.Module, StageContext]] = {}
        failed: list[str] = []
        for spec in self.spec.candidate_specs():
            name = spec.mode
            scratch = replace(ctx, lineage=Lineage(ctx.lineage.architecture, list(ctx.lineage.transforms)), notes={})
            try:
                built[name] = (handler_for(spec)(spec, self.name).apply(copy.deepcopy(model), scratch), scratch)
            except UserError as exc:  # e.g. static int8 on a model neither torch.fx nor torch.export takes
                failed.append(f"{name} failed: {first_line(exc)}")
        batches = list(ctx.calibration_inputs(self.spec.calibration_batches))
        candidates = {FLOAT: model, **{n: m for n, (m, _) in built.items()}}
        trials = choose.measure(model, candidates, batches, ctx.deployed_inputs())
        # the float model always qualifies, even where its outputs make cosine undefined (all zeros)
        good = [t for t in trials if t.name == FLOAT or t.cosine >= self.spec.min_cosine]
        chosen = min(good, key=lambda t: t.slowness)
        notes = ctx.notes_for(self.name)
        notes.findings.append(
            f"mode auto on {cpu_summary()}: kept {chosen.name}, the fastest with cosine >= {self.spec.min_cosine} "
            f"on the calibration data, timed at batch {' and '.join(map(str, chosen.ms))} "
            f"({'; '.join([*map(str, trials), *failed])})"
        )
        if chosen.name == FLOAT:
            return model
        quantized, scratch = built[chosen.name]
        ctx.lineage.transforms[:] = scratch.lineage.transforms
        for stage_notes in scratch.notes.values():
            notes.findings += stage_notes.findings
        return quantized
