"""The one trust policy: what a file may make modelshrink import or call.

A recipe is a script the user wrote: the code it names (model, data and metric factories, losses)
runs, as a script's imports would. Every other file is data, possibly downloaded: a checkpoint, a
teacher, a report.json, a search's trials.json, a run's resume state. Such a file may name only

- a torchvision classification architecture (built without weights: nothing is fetched),
- a modelshrink zoo entry, by its exact name (`ZOO`),
- a Hugging Face config (rebuilt without remote code, its sizes bounded: `models.huggingface`),
- a factory in a module the user trusted: `--trust MODULE`, `model.trust`, `trust=[...]` in Python,
  or the recipe's own `model.factory`.

Nothing else under `modelshrink` is reachable from a file, whatever `--trust` says: some of our own
functions resolve and call a target they are handed (`models.factory.build` would run `os:system`).
Resolving a name read from a file never puts the file's folder or the current directory on
`sys.path`, so a module planted beside a downloaded checkpoint cannot stand in for a trusted one.
Every loader (`checkpoint.model_from_payload`, `inspect`) asks `check_architecture` before building.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from modelshrink.errors import UserError
from modelshrink.sources import SOURCE_TYPES

ZOO = frozenset(f"modelshrink.models.zoo:{name}" for name in ("mlp", "small_cnn"))
_PLAIN = (bool, int, float, str, type(None))


def is_trusted(target: str, trust: Collection[str]) -> bool:
    """Whether a file may name `target` ('pkg.module:function'): a zoo entry, or in a module the user trusted."""
    if target in ZOO:
        return True
    module = target.partition(":")[0]
    if module == "modelshrink" or module.startswith("modelshrink."):
        return False
    return any(target == t or module == t or module.startswith(f"{t}.") for t in trust)


def check_factory(target: str, trust: Collection[str], where: object) -> None:
    if not is_trusted(target, trust):
        module = target.partition(":")[0]
        if module == "modelshrink" or module.startswith("modelshrink."):
            raise UserError(f"{where}: names {target!r}, which is not a modelshrink zoo model; a file may name "
                            f"only {', '.join(sorted(ZOO))} of ours")  # fmt: skip
        raise UserError(
            f"{where}: names the factory {target!r}, which would import and run code; if you trust this file, "
            f"pass --trust {module} (recipe: model.trust: [{module}]; Python: trust=[{module!r}])"
        )


def check_architecture(arch: Any, trust: Collection[str], where: object) -> None:
    """Refuse an architecture record read from a file unless it is one of the kinds above, with plain kwargs."""
    if not isinstance(arch, dict):
        raise UserError(f"{where}: damaged checkpoint (no architecture record)")
    kinds = [kind for kind in SOURCE_TYPES if kind in arch]
    if len(kinds) != 1 or not isinstance(arch[kinds[0]], str):
        raise UserError(f"{where}: damaged checkpoint (the architecture record names no torchvision model, factory "
                        "or Hugging Face config)")  # fmt: skip
    kwargs = arch.get("kwargs", {})
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) and _plain(v) for k, v in kwargs.items()):
        raise UserError(f"{where}: damaged checkpoint (architecture kwargs must be plain names and values)")
    if kinds == ["factory"]:
        check_factory(arch["factory"], trust, where)


def _plain(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return all(isinstance(v, _PLAIN) for v in value)
    return isinstance(value, _PLAIN)
