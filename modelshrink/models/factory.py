"""Any nn.Module from a Python factory 'package.module:function' (called with the recipe's kwargs).

Calling a factory imports and runs code, so a factory named *inside a file* (a checkpoint's
architecture record) runs only when the user trusted its module: modelshrink's own zoo always is, a
recipe's own `model.factory` is (the user wrote it), anything else needs `model.trust` / `--trust` /
`trust=[...]`. Without that, a checkpoint of dicts and strings that passes `weights_only` could still
name `os:system` and run a command.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Collection
from typing import Any

from torch import nn

from modelshrink.errors import UserError, first_line

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
    module_name, _, fn_name = target.partition(":")
    # Like `python -m`, let a factory in the current directory be found from the console script.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"model.factory: cannot import {module_name!r} ({exc})") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise UserError(f"model.factory: {module_name!r} has no callable {fn_name!r}")
    try:
        model = fn(**kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:  # bad kwargs: unknown names, negative widths
        first = first_line(exc)
        raise UserError(f"model.factory: {target}(**kwargs) failed: {first}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model.factory: {target} returned {type(model).__name__}, not a torch.nn.Module")
    return model
