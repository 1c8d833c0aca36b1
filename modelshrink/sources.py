"""Model sources: the architecture record a recipe's `model:` section makes and a checkpoint stores,
one class per source, each owning one key of the record (`{"torchvision": "resnet18", "kwargs": ...}`).

A source's builder is registered by its class (`modelshrink.registry.register`), as every other seam's
handler is. A plug-in adds a source as it adds any kind: a `BaseSourceSpec` subclass and its builder;
its records are `PluginSource`s. A record is read from checkpoints, which are data, so what it may
name is decided by the trust policy (`modelshrink.trust`) before anything is built. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

SOURCE_TYPES: dict[str, type[BaseSource]] = {}  # the record's key -> its source class


@dataclass(frozen=True)
class BaseSource:
    """One architecture record, as stored."""

    record: dict[str, Any]
    key: ClassVar[str]

    def __init_subclass__(cls, key: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if key:
            cls.key = key
            SOURCE_TYPES[key] = cls

    @property
    def name(self) -> str:
        return self.record[self.key]

    @property
    def kwargs(self) -> dict[str, Any]:
        return self.record.get("kwargs", {})

    def describe(self) -> str:
        """A short name for messages and `inspect`."""
        kwargs = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.name}({kwargs})" if kwargs else self.name


class TorchvisionSource(BaseSource, key="torchvision"):
    """A torchvision classification architecture by name, built without weights."""


class FactorySource(BaseSource, key="factory"):
    """`package.module:function` called with the record's kwargs."""


class HuggingFaceSource(BaseSource, key="huggingface"):
    """A Hugging Face config and head (task, pooling, normalize), rebuilt without remote code."""

    def describe(self) -> str:
        return f"{self.name} (Hugging Face {self.record.get('task', 'model')})"


class PluginSource(BaseSource, key="source"):
    """A plug-in's model source: `{"source": {"kind": ..., its keys}, "module": where its spec lives}`.
    The module is recorded so that a checkpoint names the code it needs, and the trust policy can refuse it
    before it is imported."""

    @property
    def name(self) -> str:
        return str(self.record[self.key].get("kind"))

    @property
    def module(self) -> str:
        return str(self.record.get("module"))

    @property
    def fields(self) -> dict[str, Any]:
        return {k: v for k, v in self.record[self.key].items() if k != "kind"}

    def describe(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.fields.items())
        return f"{self.name}({fields}) from plug-in {self.module}"


def source_of(record: dict[str, Any]) -> BaseSource | None:
    """The source a record names by exactly one known key; None when it names none or several."""
    keys = [key for key in SOURCE_TYPES if key in record]
    return SOURCE_TYPES[keys[0]](record) if len(keys) == 1 else None
