"""How a compressed model is rebuilt without its recipe and without pickled code.

A `Lineage` is the architecture a model came from (a torchvision name, a factory, a Hugging Face
config) and the structural `Transform`s stages made since (channels removed, layers swapped for int8
ones). Each transform is a small typed record of plain values, which `torch.load(weights_only=True)`
accepts, with its own `version`, and it knows how to replay itself on a fresh architecture. Stages
define their transforms next to the modules they create; this module only keeps the registry, so it
imports nothing of modelshrink but its errors: checkpoints, models and stages all depend on it.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from modelshrink.errors import UserError

_KINDS: dict[str, type[Transform]] = {}


class Transform(ABC):
    """A structural change to replay. Subclasses are dataclasses registered with
    `class X(Transform, kind="...", version=N)`, plus `keeps_float=False` for one that makes the model
    int8, half precision or compiled; bump the version when a field changes meaning."""

    kind: ClassVar[str]
    version: ClassVar[int]
    keeps_float: ClassVar[bool]  # False: exporters that quantize on their own need a float model before it

    def __init_subclass__(cls, kind: str, version: int = 1, keeps_float: bool = True, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.kind, cls.version, cls.keeps_float = kind, version, keeps_float
        _KINDS[kind] = cls

    @abstractmethod
    def replay(self, model: nn.Module) -> nn.Module:
        """Make the same change on a freshly built model (tensors get their values from the state_dict later)."""

    def to_record(self) -> dict[str, Any]:
        return {"kind": self.kind, "version": self.version, **dataclasses.asdict(self)}  # type: ignore[call-overload]


def from_record(record: Any, where: str) -> Transform:
    """The typed transform a checkpoint's record describes; records from before versions count as version 1."""
    kind = record.get("kind") if isinstance(record, dict) else None
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise UserError(f"{where}: unknown transform {kind!r}; is modelshrink too old?")
    version = record.get("version", 1)
    if not isinstance(version, int) or version > cls.version:
        raise UserError(f"{where}: transform {kind!r} version {version!r} is newer than this modelshrink reads")
    values = {k: v for k, v in record.items() if k not in ("kind", "version")}
    try:
        return cls(**values)
    except TypeError as exc:  # missing or unexpected fields: a damaged or foreign record
        raise UserError(f"{where}: damaged {kind!r} transform ({exc})") from None


@dataclass
class Lineage:
    """Where a model's architecture came from and the structural changes since."""

    architecture: dict[str, Any]
    transforms: list[Transform] = field(default_factory=list)

    @property
    def pickled(self) -> bool:
        return bool(self.architecture.get("pickled"))

    def records(self) -> list[dict[str, Any]]:
        return [t.to_record() for t in self.transforms]

    def replay(self, model: nn.Module) -> nn.Module:
        for transform in self.transforms:
            model = transform.replay(model)
        return model
