"""Any nn.Module from a Python factory 'package.module:function' (called with the recipe's kwargs).

Calling a factory imports and runs code, so a factory named *inside a file* (a checkpoint's
architecture record) runs only when the user trusted its module: modelshrink's own zoo always is, a
recipe's own `model.factory` is (the user wrote it), anything else needs `model.trust` / `--trust` /
`trust=[...]`. Without that, a checkpoint of dicts and strings that passes `weights_only` could still
name `os:system` and run a command.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from torch import nn

from modelshrink.errors import UserError, first_line
from modelshrink.plugins import resolve

ALWAYS_TRUSTED = ("modelshrink",)  # our own zoo


def is_trusted(target: str, trust: Collection[str]) -> bool:
    """Whether `target` ('pkg.module:function') is in a trusted module (or is itself a trusted target)."""
    module = target.partition(":")[0]
    return target in trust or any(module == t or module.startswith(f"{t}.") for t in (*ALWAYS_TRUSTED, *trust))


def check_trusted(target: str, trust: Collection[str], where: object) -> None:
    if not is_trusted(target, trust):
        module = target.partition(":")[0]
        raise UserError(
            f"{where}: names the factory {target!r}, which would import and run code; if you trust this file, "
            f"pass --trust {module} (recipe: model.trust: [{module}]; Python: trust=[{module!r}])"
        )


def build(target: str, kwargs: dict[str, Any]) -> nn.Module:
    fn = resolve(target, "model.factory")
    try:
        model = fn(**kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:  # bad kwargs: unknown names, negative widths
        first = first_line(exc)
        raise UserError(f"model.factory: {target}(**kwargs) failed: {first}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model.factory: {target} returned {type(model).__name__}, not a torch.nn.Module")
    return model
