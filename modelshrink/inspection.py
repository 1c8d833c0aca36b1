"""`inspect`: per-layer shapes, dtypes, parameters, sparsity and bytes (in memory and as stored in the file)
of a checkpoint or a plain state_dict.

(Named `inspection` so that it cannot shadow the public function `modelshrink.inspect`.)
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import torch

from modelshrink.errors import UserError, first_line
from modelshrink.metrics.size import TensorEntry, count_macs, module_tensors, nonfinite_names

# State-dict entries that are buffers, not learned parameters, when there is no module to ask: norm
# statistics and quantization parameters (`scale`, `weight_scale`, FX's `0_input_scale_0`, PT2E's `_scale_3`).
_BUFFER = re.compile(r"running_mean|running_var|num_batches_tracked|(.*_)?(scale|zero_point)(_\d+)?")
_FROZEN = re.compile(r"_frozen_param\d+")  # an exported int8 graph's weights: one layer each


def inspect_file(path: str | Path, allow_pickle: bool = False, trust: Collection[str] = ()) -> dict[str, Any]:
    """A checkpoint whose factory or plug-in source is not trusted is not built (that would run its code): its layers
    then come from the state_dict alone, as for a plain state_dict, without MACs."""
    from modelshrink.checkpoint import is_checkpoint_payload, model_from_payload
    from modelshrink.models import describe
    from modelshrink.sparse_storage import stored_bytes, unpack_state_dict
    from modelshrink.tensor_files import as_state_dict, read_file
    from modelshrink.trust import code_named, is_trusted

    path = Path(path)
    obj = read_file(path, allow_pickle=allow_pickle)
    info: dict[str, Any] = {"path": str(path), "file_bytes": path.stat().st_size}
    arch = obj.get("architecture") if is_checkpoint_payload(obj) else None
    stored = None  # bytes per state_dict entry in the file, where sparse storage can make them differ
    if isinstance(arch, dict) and not arch.get("pickled") and isinstance(obj.get("state_dict"), dict):
        stored = {name: stored_bytes(value) for name, value in obj["state_dict"].items()}
    code = code_named(arch)  # a damaged record is reported below
    if code is not None and not is_trusted(code, trust):
        info["untrusted_factory"] = code  # shown, never imported
        obj = unpack_state_dict(obj.get("state_dict", {}), path)
    if is_checkpoint_payload(obj):
        model, lineage = model_from_payload(obj, path, allow_pickle=allow_pickle, trust=trust)
        entries = list(module_tensors(model))
        input_shape = obj.get("input_shape")
        info.update(
            kind="modelshrink checkpoint",
            architecture=lineage.architecture,
            architecture_name=describe(lineage.architecture),
            transforms=[t.kind for t in lineage.transforms],
            input_shape=input_shape,
        )
        if input_shape:
            try:
                info["macs"] = count_macs(model, torch.zeros(1, *input_shape))
            except RuntimeError as exc:  # a shape mismatch inside the forward pass
                raise UserError(
                    f"{path}: damaged checkpoint (the model does not take its input_shape {input_shape}: "
                    f"{first_line(exc)})"
                ) from None
    elif isinstance(obj, torch.nn.Module):
        entries = list(module_tensors(obj))
        info["kind"] = "pickled nn.Module"
    else:
        state_dict = as_state_dict(dict(_tensors(obj)) if isinstance(obj, dict) else obj, path)
        entries = [_unbuilt_entry(name, tensor) for name, tensor in state_dict.items()]
        info["kind"] = "safetensors" if path.suffix == ".safetensors" else "state_dict"
        if "untrusted_factory" in info:
            info["kind"] = "modelshrink checkpoint, not built"
    info["nonfinite"] = nonfinite_names(entries)
    info["layers"] = layer_rows(entries, stored)
    info["totals"] = totals(entries, stored)
    return info


def _tensors(state_dict: dict[Any, Any]) -> Iterator[tuple[Any, Any]]:
    """Every tensor of a state_dict without its module, packed ones included: a quantized Linear saves
    its int8 weight and bias as a tuple (`_packed_params._packed_params`) beside a dtype."""
    for name, value in state_dict.items():
        if isinstance(value, tuple | list) and value and all(isinstance(v, torch.Tensor | None) for v in value):
            yield from ((f"{name}.{i}", v) for i, v in enumerate(value) if v is not None)
        elif not isinstance(value, torch.dtype):
            yield name, value


def _unbuilt_entry(name: str, tensor: torch.Tensor) -> TensorEntry:
    """A tensor known only by its name: a parameter unless the name says buffer, whatever its dtype."""
    module, _, own = name.rpartition(".")
    if _FROZEN.fullmatch(own):
        module = name
    return TensorEntry(module, "", name, tensor, not _BUFFER.fullmatch(own))


def layer_rows(entries: list[TensorEntry], stored: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """One row per module with parameters; `stored` (bytes per state_dict entry in the file) gives each
    row the bytes its entries take on disk, else the dense bytes."""
    grouped: dict[str, list[TensorEntry]] = defaultdict(list)
    for entry in entries:
        grouped[entry.module].append(entry)
    on_disk = _stored_by_module(stored, grouped) if stored is not None else {}
    rows = []
    for module, group in grouped.items():
        params = [e for e in group if e.is_param]
        if not params:
            continue
        main = next((e for e in params if e.name.endswith("weight")), params[0])
        count = sum(e.tensor.numel() for e in params)
        nonzero = sum(e.nonzero for e in params)
        rows.append(
            {
                "name": module or "(root)",
                "type": main.module_type,
                "shape": list(main.tensor.shape),
                "dtype": str(main.tensor.dtype).removeprefix("torch."),
                "params": count,
                "nonzero": nonzero,
                "sparsity": 1 - nonzero / count if count else 0.0,
                "bytes": sum(e.nbytes for e in group),
                "stored_bytes": on_disk.get(module, sum(e.nbytes for e in group)),
            }
        )
    return rows


def _stored_by_module(stored: dict[str, int], modules: Collection[str]) -> dict[str, int]:
    """Each state_dict entry's stored bytes added to the deepest module it belongs to: `fc` owns
    `fc.weight` and a quantized Linear's `fc._packed_params._packed_params`."""
    deepest_first = sorted(modules, key=len, reverse=True)
    by_module: dict[str, int] = defaultdict(int)
    for key, size in stored.items():
        owner = next((m for m in deepest_first if not m or key == m or key.startswith(m + ".")), None)
        if owner is not None:
            by_module[owner] += size
    return by_module


def totals(entries: list[TensorEntry], stored: dict[str, int] | None = None) -> dict[str, Any]:
    params = [e for e in entries if e.is_param]
    count = sum(e.tensor.numel() for e in params)
    nonzero = sum(e.nonzero for e in params)
    by_dtype: dict[str, int] = defaultdict(int)
    for e in params:
        by_dtype[str(e.tensor.dtype).removeprefix("torch.")] += e.tensor.numel()
    return {
        "params": count,
        "nonzero_params": nonzero,
        "sparsity": 1 - nonzero / count if count else 0.0,
        "tensor_bytes": sum(e.nbytes for e in entries),
        "stored_bytes": sum(stored.values()) if stored is not None else sum(e.nbytes for e in entries),
        "params_by_dtype": dict(by_dtype),
    }
