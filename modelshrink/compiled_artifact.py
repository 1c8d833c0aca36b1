"""Compile once per artifact: a compiled checkpoint's AOTInductor package, written beside model.pt by
the run and used by `modelshrink.load` instead of compiling again.

A `Compiled` model (PT2E int8 and the like) compiles with torch.compile on its first call in every new
process: 10 s before the first output of a 0.4M-parameter model. torch's own compile cache cannot help:
inductor's freezing, which makes int8 pay off, bypasses its FX graph cache. So the run also packages the
model with AOTInductor (torch.export, dynamic batch; the `.pt2` export's code), and a reload runs that
package: a shared library loaded in a fraction of a second.

A package is native code. It is used only where it is known to be the user's own: the run records its
SHA-256 in the user's cache directory (`trusted_dir`), with the torch version and CPU features it was
built for; `load` runs a package whose bytes hash to such a record made for this torch and this CPU, and
compiles as before otherwise (a checkpoint from elsewhere, or another machine), saying why.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelshrink.compiled import Compiled
from modelshrink.environment import environment
from modelshrink.inputs import Inputs

SUFFIX = ".compiled.pt2"  # model.pt -> model.compiled.pt2
MAX_PACKAGE_BYTES = 4 * 2**30  # a package beside a checkpoint is read whole to be hashed: bounded


def artifact_name(checkpoint_name: str) -> str:
    return f"{checkpoint_name.rsplit('.', 1)[0]}{SUFFIX}"


def trusted_dir() -> Path:
    """Where this user's runs record the packages they wrote (`$XDG_CACHE_HOME/modelshrink/compiled`)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "modelshrink" / "compiled"


def built_for() -> dict[str, Any]:
    """What a package is native code for: this torch and this CPU's instruction sets."""
    here = environment()
    return {"torch": torch.__version__, "cpu_features": here["cpu_features"], "kernels": here["torch_cpu_capability"]}


def package(model: Compiled, example: Inputs) -> tuple[bytes, float]:
    """The model's AOTInductor package (dynamic batch) and the seconds packaging took; raises UserError
    where torch.export or AOTInductor refuse the model (see `export.pt2`)."""
    from modelshrink.export.pt2 import packaged

    start = time.perf_counter()
    blob = packaged(model, example)
    return blob, time.perf_counter() - start


def record(blob: bytes) -> None:
    """Note that this user's run wrote `blob`, for this torch and CPU (written atomically, readable by the
    user alone)."""
    folder = trusted_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = folder / hashlib.sha256(blob).hexdigest()
    fd, scratch = tempfile.mkstemp(dir=folder, prefix=".record-")
    with os.fdopen(fd, "w") as file:
        json.dump(built_for(), file)
    os.replace(scratch, target)


def usable(blob: bytes) -> str | None:
    """None where `blob` is a package this user's run wrote for this torch and CPU, else why not."""
    entry = trusted_dir() / hashlib.sha256(blob).hexdigest()
    try:
        made_for = json.loads(entry.read_text())
    except (OSError, ValueError):
        return "no run of yours on this machine wrote it"
    if made_for != built_for():
        return f"it was built for torch {made_for.get('torch')} on another CPU's instruction sets"
    return None


def attach(model: nn.Module, checkpoint: Path) -> str | None:
    """Let a reloaded `Compiled` model run the package beside its checkpoint instead of compiling; returns
    why the package was not used (None: used, or there is none, or the model does not compile)."""
    path = checkpoint.with_name(artifact_name(checkpoint.name))
    if not isinstance(model, Compiled) or not path.is_file():
        return None
    if path.stat().st_size > MAX_PACKAGE_BYTES:
        return f"{path.name} not used (larger than {MAX_PACKAGE_BYTES // 2**30} GiB): the model compiles instead"
    blob = path.read_bytes()
    why = usable(blob)
    if why is not None:
        return f"{path.name} not used ({why}): the model compiles on its first call instead"
    # the bytes just checked are the bytes loaded: a private copy, not the path, which could change
    scratch = Path(tempfile.mkdtemp(prefix="modelshrink-compiled-")) / path.name
    scratch.write_bytes(blob)
    model.use_package(torch._inductor.aoti_load_package(str(scratch)))
    return None
