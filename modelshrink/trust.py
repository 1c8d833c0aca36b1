"""The one trust policy: what a file may make modelshrink import or call.

A recipe is a script the user wrote: the code it names (model, data and metric factories, losses)
runs, as a script's imports would. Every other file is data, possibly downloaded: a checkpoint, a
teacher, a report.json, a search's trials.json, a run's resume state. Such a file may name only

- a torchvision classification architecture (built without weights: nothing is fetched),
- a modelshrink zoo entry, by its exact name (`ZOO`),
- a Hugging Face config (rebuilt without remote code, its sizes bounded: `models.huggingface`),
- a factory in a module the user trusted: `--trust MODULE`, `model.trust`, `trust=[...]` in Python,
  or the recipe's own `model.factory`,
- a plug-in's model source, by the module that registers it, under the same rule as a factory: the
  module is imported only when the user trusted it (or the recipe names that source itself).

Nothing else under `modelshrink` is reachable from a file, whatever `--trust` says: some of our own
functions resolve and call a target they are handed (`models.factory.build` would run `os:system`).
Resolving a name read from a file never puts the file's folder or the current directory on
`sys.path`, so a module planted beside a downloaded checkpoint cannot stand in for a trusted one.
Every loader (`checkpoint.model_from_payload`, `inspect`) asks `check_architecture` before building.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from modelshrink.errors import UserError
from modelshrink.sources import SOURCE_TYPES

ZOO = frozenset(f"modelshrink.models.zoo:{name}" for name in ("mlp", "small_cnn"))
_PLAIN = (bool, int, float, str, type(None))
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def is_trusted(target: str, trust: Collection[str]) -> bool:
    """Whether a file may name `target` ('pkg.module:function'): a zoo entry, or in a module the user trusted."""
    if target in ZOO:
        return True
    module = target.partition(":")[0]
    if module == "modelshrink" or module.startswith("modelshrink."):
        return False
    return any(target == t or module == t or module.startswith(f"{t}.") for t in trust)


def code_named(arch: Any) -> str | None:
    """The 'module:name' an architecture record would import: a factory, or a plug-in source's module and kind."""
    if not isinstance(arch, dict):
        return None
    if isinstance(arch.get("factory"), str):
        return arch["factory"]
    source = arch.get("source")
    if isinstance(source, dict) and isinstance(arch.get("module"), str):
        return f"{arch['module']}:{source.get('kind')}"
    return None


def check_factory(target: str, trust: Collection[str], where: object, what: str = "the factory") -> None:
    if not is_trusted(target, trust):
        module = target.partition(":")[0]
        if module == "modelshrink" or module.startswith("modelshrink."):
            raise UserError(f"{where}: names {target!r}, which is not a modelshrink zoo model; a file may name "
                            f"only {', '.join(sorted(ZOO))} of ours")  # fmt: skip
        raise UserError(
            f"{where}: names {what} {target!r}, which would import and run code; if you trust this file, "
            f"pass --trust {module} (recipe: model.trust: [{module}]; Python: trust=[{module!r}])"
        )


def check_architecture(arch: Any, trust: Collection[str], where: object) -> None:
    """Refuse an architecture record read from a file unless it is one of the kinds above, with plain kwargs."""
    if not isinstance(arch, dict):
        raise UserError(f"{where}: damaged checkpoint (no architecture record)")
    kinds = [kind for kind in SOURCE_TYPES if kind in arch]
    named = arch[kinds[0]] if len(kinds) == 1 else None
    if not (isinstance(named, str) or (kinds == ["source"] and _plugin_record(arch))):
        raise UserError(f"{where}: damaged checkpoint (the architecture record names no torchvision model, factory, "
                        "Hugging Face config or plug-in source)")  # fmt: skip
    kwargs = arch.get("kwargs", {})
    if not _plain_fields(kwargs):
        raise UserError(f"{where}: damaged checkpoint (architecture kwargs must be plain names and values)")
    if kinds == ["factory"]:
        check_factory(arch["factory"], trust, where)
    if kinds == ["source"]:
        check_factory(str(code_named(arch)), trust, where, what="the plug-in model source")


def _plugin_record(arch: dict[str, Any]) -> bool:
    source, module = arch["source"], arch.get("module")
    return (
        isinstance(source, dict) and isinstance(source.get("kind"), str) and _plain_fields(source)
        and isinstance(module, str) and _MODULE.fullmatch(module) is not None
    )  # fmt: skip


def _plain_fields(fields: Any) -> bool:
    return isinstance(fields, dict) and all(isinstance(k, str) and _plain(v) for k, v in fields.items())


def _plain(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return all(isinstance(v, _PLAIN) for v in value)
    return isinstance(value, _PLAIN)
