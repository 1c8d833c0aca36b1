"""Model sources: turn the recipe's `model:` section into an nn.Module and its lineage.

The lineage (architecture + structural transforms) is what lets a compressed checkpoint be rebuilt
later without the recipe and without unpickling code; see `modelshrink.checkpoint`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from modelshrink.checkpoint import Lineage, is_checkpoint_payload, model_from_payload
from modelshrink.errors import UserError
from modelshrink.metrics.size import module_tensors, nonfinite_names
from modelshrink.models import factory, huggingface, torchvision
from modelshrink.models.weights import as_state_dict, load_into, read_file
from modelshrink.recipe.schema import ModelSpec


def load_model(spec: ModelSpec) -> tuple[nn.Module, Lineage]:
    """Build (and fill with weights) the model the recipe names; refuse one whose weights hold NaN or Inf."""
    model, lineage = _load(spec)
    bad = nonfinite_names(module_tensors(model))
    if bad:
        where = f"model.checkpoint: {spec.checkpoint}" if spec.checkpoint else "model"
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise UserError(f"{where}: {len(bad)} tensor(s) hold NaN or Inf: {shown}")
    return model, lineage


def _load(spec: ModelSpec) -> tuple[nn.Module, Lineage]:
    if spec.huggingface is not None and spec.checkpoint is None:
        model, arch = huggingface.load_pretrained(spec.huggingface.source, **_huggingface_head(spec))
        return model, Lineage(arch)
    arch = architecture_of(spec)
    if spec.checkpoint is None:
        assert arch is not None  # the schema requires an architecture or a checkpoint
        return build_architecture(arch), Lineage(arch)
    obj = read_file(spec.checkpoint, allow_pickle=spec.allow_pickle)
    if is_checkpoint_payload(obj):
        return model_from_payload(obj, spec.checkpoint, allow_pickle=spec.allow_pickle, trust=spec.trusted)
    if isinstance(obj, nn.Module):
        return obj, Lineage({"pickled": True})
    if arch is None:
        raise UserError(
            f"model.checkpoint: {spec.checkpoint} is a plain state_dict; add model.torchvision or "
            "model.factory to say which architecture it belongs to"
        )
    model = build_architecture(arch)
    load_into(model, as_state_dict(obj, spec.checkpoint), spec.checkpoint, describe(arch))
    return model, Lineage(arch)


def architecture_of(spec: ModelSpec) -> dict[str, Any] | None:
    kwargs = dict(spec.kwargs)
    if spec.num_classes is not None:
        kwargs["num_classes"] = spec.num_classes
    if spec.torchvision:
        return {"torchvision": spec.torchvision, "kwargs": kwargs}
    if spec.factory:
        return {"factory": spec.factory, "kwargs": kwargs}
    if spec.huggingface:  # the checkpoint's weights go into this architecture
        return huggingface.architecture(spec.huggingface.source, **_huggingface_head(spec))
    return None


def _huggingface_head(spec: ModelSpec) -> dict[str, Any]:
    hf = spec.huggingface
    assert hf is not None
    return {"task": hf.task, "pooling": hf.pooling, "normalize": hf.normalize, "num_classes": spec.num_classes}


def build_architecture(arch: dict[str, Any]) -> nn.Module:
    if "torchvision" in arch:
        return torchvision.build(arch["torchvision"], arch.get("kwargs", {}))
    if "factory" in arch:
        return factory.build(arch["factory"], arch.get("kwargs", {}))
    if "huggingface" in arch:
        return huggingface.build(arch)
    raise UserError(f"unknown architecture record {arch!r}")


def describe(arch: dict[str, Any]) -> str:
    """A short name for an architecture record, for messages and `inspect`."""
    if "huggingface" in arch:
        return f"{arch['huggingface']} (Hugging Face {arch.get('task', 'model')})"
    name = arch.get("torchvision") or arch.get("factory") or "a pickled model"
    kwargs = ", ".join(f"{k}={v!r}" for k, v in arch.get("kwargs", {}).items())
    return f"{name}({kwargs})" if kwargs else str(name)
