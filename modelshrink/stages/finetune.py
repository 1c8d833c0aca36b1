"""Fine-tuning and transfer learning: choose what trains, optionally replace the classifier.

Strategies: `full` trains everything; `head` trains the top-level block that holds the classifier
(the backbone is frozen); `last_layer` trains only the final layer; `partial` trains the classifier
plus the `unfreeze` globs and/or the last `unfreeze_last` blocks. Normalization layers whose
parameters are frozen also keep their running statistics (eval mode) while the rest trains.
"""

from __future__ import annotations

from torch import nn

from modelshrink.errors import UserError
from modelshrink.recipe.stage_specs import FinetuneSpec
from modelshrink.registry import register
from modelshrink.stages.base import Stage, StageContext
from modelshrink.stages.prune import reshape
from modelshrink.stages.selection import NORM_TYPES, blocks, find_classifier, matches_any, set_submodule


@register(FinetuneSpec)
class FinetuneStage(Stage[FinetuneSpec]):
    def apply(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        if self.spec.num_classes is not None:
            self._replace_classifier(model, ctx)
        trainable = self._trainable_modules(model)
        params = [(n, p) for n, p in model.named_parameters() if _owner(n) in trainable]
        frozen_norms = [m for name, m in model.named_modules() if isinstance(m, NORM_TYPES) and name not in trainable]
        previous = {p: p.requires_grad for p in model.parameters()}
        chosen = {id(p) for _, p in params}
        for param in model.parameters():
            param.requires_grad_(id(param) in chosen)
        try:
            return ctx.train(model, self.spec, self.name, params=params, frozen_norms=frozen_norms)
        finally:
            for param, flag in previous.items():
                param.requires_grad_(flag)

    def _trainable_modules(self, model: nn.Module) -> set[str]:
        """Names of every module (and its descendants) that trains under the strategy."""
        if self.spec.strategy == "full":
            return {name for name, _ in model.named_modules()}
        classifier = _classifier(model)
        roots = {classifier}
        if self.spec.strategy == "head":
            roots = {classifier.split(".")[0]}
        elif self.spec.strategy == "partial":
            names = [name for name, _ in model.named_modules() if name]
            matched = {n for n in names if matches_any(n, self.spec.unfreeze)}
            if self.spec.unfreeze and not matched:
                raise UserError(f"unfreeze: {self.spec.unfreeze} match no layer")
            roots |= matched
            if self.spec.unfreeze_last:
                roots |= set(blocks(model)[-self.spec.unfreeze_last :])
        return {name for name, _ in model.named_modules() if any(name == r or name.startswith(f"{r}.") for r in roots)}

    def _replace_classifier(self, model: nn.Module, ctx: StageContext) -> None:
        """A new, freshly initialised output layer for `num_classes` (transfer learning)."""
        wanted = self.spec.num_classes
        if wanted != ctx.data.num_classes:
            raise UserError(f"num_classes: {wanted}, but the data has {ctx.data.num_classes} classes")
        name = _classifier(model)
        old = model.get_submodule(name)
        before = reshape.snapshot(model)
        if isinstance(old, nn.Linear):
            new: nn.Module = nn.Linear(old.in_features, wanted, bias=old.bias is not None)
        else:
            new = type(old)(
                old.in_channels, wanted, old.kernel_size, old.stride, old.padding, bias=old.bias is not None
            )
        set_submodule(model, name, new)
        record = reshape.record_changes(before, model)
        if record is not None:
            ctx.lineage.transforms.append(record)


def _classifier(model: nn.Module) -> str:
    try:
        return find_classifier(model)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _owner(param_name: str) -> str:
    return param_name.rpartition(".")[0]
