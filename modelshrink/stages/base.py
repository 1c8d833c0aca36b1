"""The one interface every stage implements, the small context they share, and the registry.

Like torchao's `quantize_(model, config)`, a stage spec's type picks its handler: the pipeline
looks up `STAGES[spec.kind]` and calls `apply(model, ctx)`. Stages never write files.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from torch import nn

from modelshrink.checkpoint import Lineage
from modelshrink.data.bundle import DataBundle
from modelshrink.recipe.schema import EvaluateSpec

SpecT = TypeVar("SpecT")


@dataclass
class StageContext:
    """What stages may read: the data, the untouched original model, the run's settings.

    `lineage` is the one thing a stage may append to: a record of any structural change it makes,
    so that the checkpoint can be rebuilt (see `modelshrink.checkpoint.register_rebuilder`)."""

    data: DataBundle
    original_model: nn.Module
    lineage: Lineage
    evaluate: EvaluateSpec
    seed: int


class Stage(ABC, Generic[SpecT]):
    kind: ClassVar[str]

    def __init__(self, spec: SpecT, name: str):
        self.spec = spec
        self.name = name

    @abstractmethod
    def apply(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        """Return the compressed model (in place or a new module)."""


STAGES: dict[str, type[Stage]] = {}

StageT = TypeVar("StageT", bound=type[Stage])


def register(kind: str) -> Callable[[StageT], StageT]:
    def decorator(cls: StageT) -> StageT:
        cls.kind = kind
        STAGES[kind] = cls
        return cls

    return decorator
