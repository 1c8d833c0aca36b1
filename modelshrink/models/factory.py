"""Any nn.Module from a Python factory 'package.module:function' (called with the recipe's kwargs)."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from torch import nn

from modelshrink.errors import UserError


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
    except TypeError as exc:
        raise UserError(f"model.factory: {target}(**kwargs) failed: {exc}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model.factory: {target} returned {type(model).__name__}, not a torch.nn.Module")
    return model
