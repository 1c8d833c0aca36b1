"""Read tensors from a file safely: `weights_only=True` unless the user opted in to full unpickling."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from modelshrink.errors import UserError, first_line
from modelshrink.quiet import quiet

# Keys under which training scripts commonly nest the weights they save.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "weights")
# Prefixes that wrappers add to every key: DistributedDataParallel/DataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def read_file(path: Path, allow_pickle: bool = False) -> Any:
    """Load a .pt/.pth/.safetensors file onto the CPU (checkpoints saved on a GPU load too)."""
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give the checkpoint file inside it")
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        with quiet():  # torch's TypedStorage deprecation notice on old files
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names the object it refused ("Unsupported global: GLOBAL torch.nn...Linear", or
        # "unsupported GLOBAL posix.system"); without such a name the bytes are junk
        named = re.search(r"GLOBAL ([\w.]+)", str(exc), flags=re.IGNORECASE)
        if named is None:
            raise UserError(f"{path}: not a PyTorch checkpoint (unreadable pickle data)") from None
        if not allow_pickle:
            raise UserError(
                f"{path}: holds pickled Python objects that would import and call {named.group(1)} while "
                "loading; refused, since unpickling can run any code. Only if you trust this file: "
                "model.allow_pickle: true (inspect: --allow-pickle)"
            ) from None
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:  # any failure inside user pickles is the file's problem, not ours
            raise UserError(f"{path}: cannot unpickle ({type(exc2).__name__}: {exc2})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        # whatever torch's unpickler trips over in junk bytes
        first = first_line(exc)
        if isinstance(exc, KeyError | IndexError | TypeError | AttributeError):
            first = "unreadable pickle data"
        raise UserError(f"{path}: not a PyTorch checkpoint ({first})") from None


def as_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap the common shapes of a saved state_dict into a flat {name: tensor} dict."""
    for _ in range(2):
        if isinstance(obj, dict) and not _all_tensors(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not obj or not _all_tensors(obj):
        raise UserError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return obj


def load_into(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    """`load_state_dict(strict=True)` with a one-line explanation when the weights do not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and hasattr(v, "shape") and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    if problems:
        raise UserError(f"{path}: weights do not fit {arch}: {'; '.join(problems)}")
    model.load_state_dict(state_dict, strict=True)


def _all_tensors(obj: dict[Any, Any]) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
