"""The user's own code named in a recipe as 'package.module:function': model and data factories,
metrics, losses. Naming it in the recipe is what trusts it (the user wrote the recipe); a factory
named inside any other *file* is checked by the trust policy first (`modelshrink.trust`)."""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from modelshrink.errors import UserError, first_line

TARGET_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def resolve(target: str, where: str, *, from_recipe: bool = True) -> Callable[..., Any]:
    """The callable `target` names; `where` (e.g. 'data.factory') starts the one-line error.

    A recipe's own targets may live in the current directory, as a script's imports would (`python -m`
    puts it on the path; the console script does not). A target read from any other file
    (`from_recipe=False`, already allowed by `modelshrink.trust`) is imported from the path as it is."""
    module_name, _, fn_name = target.partition(":")
    module = import_module(module_name, where, from_recipe=from_recipe)
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise UserError(f"{where}: {module_name!r} has no callable {fn_name!r}")
    return fn


def import_module(name: str, where: str, *, from_recipe: bool = True) -> ModuleType:
    """The module `name`, imported as `resolve` imports a target's (the current directory only for a recipe's)."""
    try:
        with _current_directory_importable(from_recipe):
            return importlib.import_module(name)
    except ImportError as exc:
        hint = "" if from_recipe else "; modules named by a file are never imported from the current directory"
        raise UserError(f"{where}: cannot import {name!r} ({exc}{hint})") from None


@contextmanager
def _current_directory_importable(wanted: bool) -> Iterator[None]:
    """The current directory on `sys.path` while a recipe's module is imported, and only then: a later
    import of a name read from a checkpoint must not find modules planted there."""
    cwd = os.getcwd()
    added = wanted and cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def run_user_code(fn: Callable[..., Any], target: str, where: str, *args: Any, **kwargs: Any) -> Any:
    """Call the user's code; its failure is theirs to fix, said in one line instead of a traceback."""
    try:
        return fn(*args, **kwargs)
    except UserError:
        raise
    except Exception as exc:  # whatever their code raises
        raise UserError(f"{where}: {target} failed: {type(exc).__name__}: {first_line(exc)}") from None
