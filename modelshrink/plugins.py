"""The user's own code named in a recipe as 'package.module:function': model and data factories,
metrics, losses. Naming it in the recipe is what trusts it (the user wrote the recipe); a factory
named inside a *file* is checked against `--trust` first (`models.factory.check_trusted`)."""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from modelshrink.errors import UserError, first_line

TARGET_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def resolve(target: str, where: str) -> Callable[..., Any]:
    """The callable `target` names; `where` (e.g. 'data.factory') starts the one-line error."""
    module_name, _, fn_name = target.partition(":")
    # Like `python -m`, let code in the current directory be found from the console script.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"{where}: cannot import {module_name!r} ({exc})") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise UserError(f"{where}: {module_name!r} has no callable {fn_name!r}")
    return fn


def run_user_code(fn: Callable[..., Any], target: str, where: str, *args: Any, **kwargs: Any) -> Any:
    """Call the user's code; its failure is theirs to fix, said in one line instead of a traceback."""
    try:
        return fn(*args, **kwargs)
    except UserError:
        raise
    except Exception as exc:  # whatever their code raises
        raise UserError(f"{where}: {target} failed: {type(exc).__name__}: {first_line(exc)}") from None
