"""Any nn.Module from a Python factory 'package.module:function' (called with the recipe's kwargs).

Calling a factory imports and runs code, so a factory named *inside a file* (a checkpoint's
architecture record) is built only after the trust policy allowed it (`modelshrink.trust`); this
module never decides that itself. Without the policy, a checkpoint of dicts and strings that passes
`weights_only` could still name `os:system` and run a command.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from modelshrink.errors import UserError, first_line
from modelshrink.registry import register
from modelshrink.sources import FactorySource
from modelshrink.user_code import resolve


@register(FactorySource)
def build_source(source: FactorySource, *, from_recipe: bool, where: object) -> nn.Module:
    return build(source.name, source.kwargs, from_recipe=from_recipe)


def build(target: str, kwargs: dict[str, Any], *, from_recipe: bool = True) -> nn.Module:
    fn = resolve(target, "model.factory", from_recipe=from_recipe)
    try:
        model = fn(**kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:  # bad kwargs: unknown names, negative widths
        first = first_line(exc)
        raise UserError(f"model.factory: {target}(**kwargs) failed: {first}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model.factory: {target} returned {type(model).__name__}, not a torch.nn.Module")
    return model
