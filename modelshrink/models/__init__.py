"""Architectures: the record that names one (torchvision, factory, Hugging Face, a plug-in's source) and
building it.

Loading a whole `model:` section (weights, checkpoints included) is `modelshrink.loading`; this
package knows nothing of checkpoints, so checkpoints can depend on it.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from modelshrink.errors import UserError
from modelshrink.models import factory, huggingface, plugin, torchvision  # noqa: F401 (each registers its source)
from modelshrink.recipe.schema import ModelSpec
from modelshrink.registry import SOURCES
from modelshrink.sources import source_of


def architecture_of(spec: ModelSpec) -> dict[str, Any] | None:
    kwargs = dict(spec.kwargs)
    if spec.num_classes is not None:
        kwargs["num_classes"] = spec.num_classes
    if spec.torchvision:
        return {"torchvision": spec.torchvision, "kwargs": kwargs}
    if spec.factory:
        return {"factory": spec.factory, "kwargs": kwargs}
    if spec.source:
        return {"source": spec.source.model_dump(mode="json"), "module": type(spec.source).__module__}
    if spec.huggingface:  # the checkpoint's weights go into this architecture
        return huggingface.architecture(spec.huggingface.source, **huggingface_head(spec))
    return None


def huggingface_head(spec: ModelSpec) -> dict[str, Any]:
    hf = spec.huggingface
    assert hf is not None
    return {"task": hf.task, "pooling": hf.pooling, "normalize": hf.normalize, "num_classes": spec.num_classes}


def build_architecture(arch: dict[str, Any], *, from_recipe: bool = True, where: object = "checkpoint") -> nn.Module:
    """`from_recipe=False` for a record read from a file (`where`), which `modelshrink.trust` has allowed already."""
    source = source_of(arch)
    if source is None:
        raise UserError(f"unknown architecture record {arch!r}")
    return SOURCES.handler_for(source)(source, from_recipe=from_recipe, where=where)


def describe(arch: dict[str, Any]) -> str:
    """A short name for an architecture record, for messages and `inspect`."""
    source = source_of(arch)
    return source.describe() if source is not None else "a pickled model"
