"""Load the model a recipe's `model:` section names: an architecture, pretrained weights, a plain
state_dict or safetensors file, or a modelshrink checkpoint (rebuilt through its lineage)."""

from __future__ import annotations

from torch import nn

from modelshrink.checkpoint import is_checkpoint_payload, model_from_payload
from modelshrink.errors import UserError
from modelshrink.lineage import Lineage
from modelshrink.metrics.size import module_tensors, nonfinite_names
from modelshrink.models import architecture_of, build_architecture, describe, huggingface, huggingface_head
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
        model, arch = huggingface.load_pretrained(spec.huggingface.source, **huggingface_head(spec))
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
