"""Every way a model is loaded: the model a recipe's `model:` section names (an architecture,
pretrained weights, a plain state_dict or safetensors file, or a modelshrink checkpoint rebuilt through
its lineage), and a checkpoint file on its own (`modelshrink.load`). What a checkpoint holds and how
it is rebuilt is `checkpoint`; reading tensor files safely is `tensor_files`."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from torch import nn

from modelshrink.checkpoint import checked_lineage, is_checkpoint_payload, model_from_payload, read_payload, rebuild
from modelshrink.compiled import Compiled
from modelshrink.compiled_artifact import load_package
from modelshrink.errors import UserError
from modelshrink.lineage import Lineage
from modelshrink.metrics.size import module_tensors, nonfinite_names
from modelshrink.models import architecture_of, build_architecture, describe, huggingface, huggingface_head
from modelshrink.progress import log
from modelshrink.recipe.schema import ModelSpec
from modelshrink.tensor_files import as_state_dict, load_into, read_file


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


def load_checkpoint(path: str | Path, allow_pickle: bool = False, trust: Collection[str] = ()) -> nn.Module:
    """Rebuild a modelshrink checkpoint in eval mode, with no recipe needed. A compiled model runs the
    package its run wrote beside it where that is this user's own, for this torch and CPU
    (`compiled_artifact`), instead of compiling on its first call; why not is logged. With the package,
    the eager model behind it is rebuilt only when something needs it (`Compiled.deferred`): the checkpoint
    is checked and trusted as any other first, and its bytes are those the package was built from."""
    path = Path(path)
    payload = read_payload(path, allow_pickle)
    lineage = checked_lineage(payload, path, trust)
    compiles = not lineage.pickled and bool(lineage.transforms) and lineage.transforms[-1].kind == "compile"
    package, why_not = load_package(path) if compiles else (None, None)
    if package is not None:
        return Compiled.deferred(lambda: rebuild(payload, path, lineage).inner, package)
    if why_not:
        log(why_not)
    return rebuild(payload, path, lineage)
