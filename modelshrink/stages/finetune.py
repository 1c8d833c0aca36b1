"""Fine-tuning with a freeze strategy:

- `none`: everything trains;
- `backbone`: the backbone's conv/linear weights are frozen, the classifier and the normalization
  layers train (cheap adaptation to a new data distribution);
- `all_but_classifier`: only the classifier trains, normalization statistics are frozen too.
"""

from __future__ import annotations

from torch import nn

from modelshrink.errors import UserError
from modelshrink.recipe.schema import FinetuneSpec
from modelshrink.stages.base import Stage, StageContext, register
from modelshrink.stages.selection import NORM_TYPES, find_classifier
from modelshrink.train import fit


@register("finetune")
class FinetuneStage(Stage[FinetuneSpec]):
    def apply(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        trainable, frozen_norms = self._split(model)
        previous = {p: p.requires_grad for p in model.parameters()}
        for param in model.parameters():
            param.requires_grad_(param in trainable)
        try:
            return fit(
                model,
                ctx.data,
                self.spec,
                label=self.name,
                params=list(trainable),
                frozen_norms=frozen_norms,
                max_val_batches=ctx.evaluate.max_val_batches,
            )
        finally:
            for param, flag in previous.items():
                param.requires_grad_(flag)

    def _split(self, model: nn.Module) -> tuple[set[nn.Parameter], list[nn.Module]]:
        if self.spec.freeze == "none":
            return set(model.parameters()), []
        try:
            classifier = model.get_submodule(find_classifier(model))
        except ValueError as exc:
            raise UserError(f"freeze={self.spec.freeze}: {exc}") from None
        trainable = set(classifier.parameters())
        norms = [m for m in model.modules() if isinstance(m, NORM_TYPES)]
        if self.spec.freeze == "backbone":
            trainable.update(p for m in norms for p in m.parameters())
            return trainable, []
        return trainable, norms
