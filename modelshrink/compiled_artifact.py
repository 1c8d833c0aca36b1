"""Compile once per artifact: a compiled checkpoint's AOTInductor package, written beside model.pt by
the run and used by `modelshrink.load` instead of compiling again.

A `Compiled` model (PT2E int8 and the like) compiles with torch.compile on its first call in every new
process: 10 s before the first output of a 0.4M-parameter model. torch's own compile cache cannot help:
inductor's freezing, which makes int8 pay off, bypasses its FX graph cache. So the run also packages the
model with AOTInductor (torch.export, dynamic batch; the `.pt2` export's code), and a reload runs that
package: a shared library loaded in a fraction of a second.

A package is native code. It is used only where it is known to be the user's own: the run records its
SHA-256 in the user's cache directory (`trusted_dir`, owned by the user and writable by no one else),
with the checkpoint it was built from and the torch version and CPU features it was built for; `load`
runs a package whose bytes hash to such a record made for this very checkpoint, this torch and this CPU,
and compiles as before otherwise (a checkpoint from elsewhere, another machine, a package beside another
checkpoint), saying why.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from modelshrink.compiled import Compiled
from modelshrink.environment import environment
from modelshrink.inputs import Inputs

SUFFIX = ".compiled.pt2"  # model.pt -> model.compiled.pt2
MAX_PACKAGE_BYTES = 4 * 2**30  # a package beside a checkpoint is read whole to be hashed: bounded


def artifact_name(checkpoint_name: str) -> str:
    return f"{checkpoint_name.rsplit('.', 1)[0]}{SUFFIX}"


MAX_RECORD_BYTES = 4096  # a record is a few lines of JSON; anything larger is not one of ours


def trusted_dir() -> Path:
    """Where this user's runs record the packages they wrote (`$XDG_CACHE_HOME/modelshrink/compiled`; a
    relative XDG_CACHE_HOME is ignored, as the XDG spec says, so the working directory never decides)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / "modelshrink" / "compiled"


def built_for(checkpoint: bytes) -> dict[str, Any]:
    """What a package is native code for: this checkpoint's weights, this torch and this CPU's instruction sets."""
    here = environment()
    return {
        "checkpoint": hashlib.sha256(checkpoint).hexdigest(),
        "torch": torch.__version__,
        "cpu_features": here["cpu_features"],
        "kernels": here["torch_cpu_capability"],
    }


def _private(path: Path, kind: int) -> bool:
    """A real directory or file (`kind`: stat.S_IFDIR, S_IFREG; no link, no FIFO that would block a read),
    owned by this user and writable by no one else (a shared cache directory must not vouch for code)."""
    info = path.lstat()
    return stat.S_IFMT(info.st_mode) == kind and info.st_uid == os.getuid() and not info.st_mode & 0o022


def package(model: Compiled, example: Inputs) -> tuple[bytes, float]:
    """The model's AOTInductor package (dynamic batch) and the seconds packaging took; raises UserError
    where torch.export or AOTInductor refuse the model (see `export.pt2`)."""
    from modelshrink.export.pt2 import packaged

    start = time.perf_counter()
    blob = packaged(model, example)
    return blob, time.perf_counter() - start


def record(blob: bytes, checkpoint: bytes) -> str | None:
    """Note that this user's run wrote `blob` for `checkpoint`, this torch and CPU (written atomically,
    readable by the user alone); returns why it could not be noted (no writable cache directory)."""
    try:
        folder = trusted_dir()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if folder.is_symlink() or not folder.is_dir():
            return f"{folder} is a link or not a directory: no record is written through it"
        folder.chmod(0o700)
        fd, scratch = tempfile.mkstemp(dir=folder, prefix=".record-")
        with os.fdopen(fd, "w") as file:
            json.dump(built_for(checkpoint), file)
        os.replace(scratch, folder / hashlib.sha256(blob).hexdigest())
    except (OSError, RuntimeError) as exc:  # RuntimeError: no home directory to find a cache in
        return str(exc)
    return None


def usable(blob: bytes, checkpoint: bytes) -> str | None:
    """None where `blob` is a package this user's run wrote for `checkpoint`, this torch and CPU, else why not."""
    try:
        folder = trusted_dir()
        entry = folder / hashlib.sha256(blob).hexdigest()
        if not (_private(folder, stat.S_IFDIR) and _private(entry, stat.S_IFREG)):
            return "its record is not a file yours alone"
        with entry.open("rb") as file:
            made_for = json.loads(file.read(MAX_RECORD_BYTES + 1))
    except (OSError, RuntimeError):
        return "no run of yours on this machine wrote it"
    except ValueError:
        made_for = None
    if not isinstance(made_for, dict):
        return "its record is damaged (not one of ours)"
    if made_for.get("checkpoint") != hashlib.sha256(checkpoint).hexdigest():
        return "it was built for another checkpoint"
    if made_for != built_for(checkpoint):
        return f"it was built for torch {made_for.get('torch')} on another CPU's instruction sets"
    return None


class Package:
    """A loaded AOTInductor package, called as the model it was built from. Written by hand over torch's C
    loader rather than through `torch._inductor.aoti_load_package`: its Python wrapper lives in modules that
    import inductor and dynamo, 2.5 s of a reload that runs no compiler; the C loader needs neither. The
    call is the wrapper's: inputs flattened as `(args, kwargs)` in the order the package was built with."""

    def __init__(self, path: str):
        from torch.utils import _pytree as pytree

        self.loader = torch._C._aoti.AOTIModelPackageLoader(path, "model", False, 1, -1)
        in_spec, out_spec = (pytree.treespec_loads(spec) for spec in self.loader.get_call_spec())
        self.keywords, self.out_spec = list(in_spec.child(1).context), out_spec

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from torch.utils import _pytree as pytree

        if set(kwargs) != set(self.keywords):
            raise TypeError(f"the compiled package takes keyword inputs {self.keywords}, got {sorted(kwargs)}")
        ordered = {name: kwargs[name] for name in self.keywords}
        inputs = [x for x in pytree.tree_leaves((args, ordered)) if isinstance(x, torch.Tensor)]
        return pytree.tree_unflatten(self.loader.boxed_run(inputs), self.out_spec)


def load_package(checkpoint: Path) -> tuple[Any, str | None]:
    """The package beside `checkpoint`, loaded, where this user's run wrote it for this checkpoint, torch
    and CPU (`usable`); else None and why not (None too where there is no package)."""
    path = checkpoint.with_name(artifact_name(checkpoint.name))
    if not path.is_file():
        return None, None
    try:
        with path.open("rb") as file:
            blob = file.read(MAX_PACKAGE_BYTES + 1)
        why = "larger than 4 GiB" if len(blob) > MAX_PACKAGE_BYTES else usable(blob, checkpoint.read_bytes())
        if why is None:
            # the bytes just checked are the bytes loaded: a private copy, not the path, which could change;
            # the loader unpacks it into a directory of its own, so the copy goes once loaded
            with tempfile.TemporaryDirectory(prefix="modelshrink-compiled-") as scratch:
                copy = Path(scratch) / path.name
                copy.write_bytes(blob)
                return Package(str(copy)), None
    except Exception as exc:  # unreadable, or the loader refuses it: compiling still works
        why = f"{type(exc).__name__}: {exc}"
    return None, f"{path.name} not used ({why}): the model compiles on its first call instead"
