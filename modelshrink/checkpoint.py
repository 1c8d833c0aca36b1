"""The compressed-model file: architecture + structural transforms + tensors, no pickled code.

A pruned or quantized model no longer matches the class that built it, and pickling the module
would make every reload run arbitrary code. So a checkpoint records how to rebuild the module:
the architecture it came from (torchvision name or factory) and the list of structural transforms
the stages applied (e.g. "these Linear layers became dynamic int8"). Loading rebuilds the
architecture, replays each transform through the rebuilder its stage registered, then loads the
state_dict strictly; everything is read with `torch.load(weights_only=True)`.

Format 2 stores tensors that are sparse enough as a bitmask plus their non-zero values
(`sparse_storage`); a checkpoint with none is written as format 1, which older releases read.
"""

from __future__ import annotations

import io
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelshrink.errors import UserError, first_line
from modelshrink.lineage import Lineage, from_record
from modelshrink.quiet import quiet
from modelshrink.sparse_storage import holds_records, pack_state_dict, unpack_state_dict
from modelshrink.trust import check_architecture
from modelshrink.version import __version__

FORMAT = "modelshrink"
FORMAT_VERSION = 2
DENSE_FORMAT_VERSION = 1  # no sparse-bitmask records


def to_bytes(
    model: nn.Module, lineage: Lineage, input_shape: tuple[int, ...] | None = None, sparse: bool = True
) -> bytes:
    """The checkpoint file's bytes; `sparse=False` stores every tensor dense (format 1), for comparisons."""
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": DENSE_FORMAT_VERSION,
        "modelshrink_version": __version__,
        "architecture": lineage.architecture,
        "transforms": lineage.records(),
        "input_shape": list(input_shape) if input_shape else None,
    }
    if lineage.pickled:
        payload["model"] = model  # the source itself was a full pickle: there is nothing to rebuild from
    else:
        state_dict = model.state_dict()
        payload["state_dict"] = pack_state_dict(state_dict) if sparse else state_dict
        if holds_records(payload["state_dict"]):
            payload["format_version"] = FORMAT_VERSION
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def from_bytes(blob: bytes, allow_pickle: bool = False, trust: Collection[str] = ()) -> tuple[nn.Module, Lineage]:
    """The inverse of `to_bytes`, for checkpoints held in memory or written by this process."""
    with quiet():  # torch's TypedStorage notice when reading quantized tensors
        payload = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=not allow_pickle)
    return model_from_payload(payload, Path("<in memory>"), allow_pickle=allow_pickle, trust=trust)


def is_checkpoint_payload(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def checked_lineage(payload: dict[str, Any], path: Path, trust: Collection[str]) -> Lineage:
    """The payload's lineage once its shape and (unless it holds a pickled model) the trust policy are checked."""
    from modelshrink import stages  # noqa: F401  (importing the stages registers their transforms)

    _check_shape(payload, path)
    lineage = Lineage(payload["architecture"], [from_record(r, str(path)) for r in payload.get("transforms", [])])
    if not lineage.pickled:
        check_architecture(lineage.architecture, trust, path)
    return lineage


def read_payload(path: Path, allow_pickle: bool = False) -> dict[str, Any]:
    """A checkpoint file's contents (architecture, transforms, tensors, input shape), not yet rebuilt."""
    from modelshrink.tensor_files import read_file

    payload = read_file(path, allow_pickle=allow_pickle)
    if not is_checkpoint_payload(payload):
        raise UserError(f"{path}: not a modelshrink checkpoint (use `modelshrink inspect` for plain state_dicts)")
    return payload


def _check_shape(payload: dict[str, Any], path: Path) -> None:
    """One line for a damaged or foreign file instead of a KeyError or TypeError deep in the rebuild."""
    version = payload.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise UserError(f"{path}: damaged checkpoint (format_version {version!r} is not an integer)")
    if version > FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format {version} is newer than this modelshrink reads")
    transforms = payload.get("transforms", [])
    if not isinstance(payload.get("architecture"), dict):
        raise UserError(f"{path}: damaged checkpoint (no architecture record)")
    if not isinstance(transforms, list) or not all(isinstance(t, dict) for t in transforms):
        raise UserError(f"{path}: damaged checkpoint (transforms must be a list of records)")
    if not payload["architecture"].get("pickled") and not isinstance(payload.get("state_dict"), dict):
        raise UserError(f"{path}: damaged checkpoint (no state_dict)")
    shape = payload.get("input_shape")
    if shape is not None and not (
        isinstance(shape, list | tuple) and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise UserError(f"{path}: damaged checkpoint (input_shape {shape!r} is not a list of positive sizes)")


def model_from_payload(
    payload: dict[str, Any], path: Path, allow_pickle: bool = False, trust: Collection[str] = ()
) -> tuple[nn.Module, Lineage]:
    """Rebuild from a read payload, once the trust policy allowed what it names (`trust.check_architecture`)."""
    lineage = checked_lineage(payload, path, trust)
    return rebuild(payload, path, lineage), lineage


def rebuild(payload: dict[str, Any], path: Path, lineage: Lineage) -> nn.Module:
    """The model a checked payload describes (its architecture built, its transforms replayed, its
    tensors loaded), in eval mode."""
    from modelshrink.models import build_architecture, describe
    from modelshrink.tensor_files import load_into

    if lineage.pickled:
        if not isinstance(payload.get("model"), nn.Module):
            raise UserError(f"{path}: damaged checkpoint (pickled model missing)")
        return payload["model"].eval()
    model = build_architecture(lineage.architecture, from_recipe=False, where=path)
    try:
        model = lineage.replay(model)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError, RuntimeError) as exc:
        raise UserError(f"{path}: damaged checkpoint (its transforms do not fit the architecture: "
                        f"{type(exc).__name__}: {first_line(exc)})") from None  # fmt: skip
    load_into(model, unpack_state_dict(payload["state_dict"], path), path, describe(lineage.architecture))
    return model.eval()
