"""Write whole outputs or nothing: each is staged beside its target (a directory built under a temporary
name, a file written to one), then renamed into place; `outputs.Claim.write` stages every output of a
command before it renames the first, so a failure while staging leaves none of them."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path


def stage_directory(target: Path, files: dict[str, bytes]) -> Path:
    """A directory beside `target` holding exactly `files`, flushed to disk; removed again if writing fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        staging.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would make the output the user's alone
        for name, data in files.items():
            with open(staging / name, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def _umask() -> int:
    """The process's umask, read without changing it (os.umask can only set it, racing other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def commit_directory(staging: Path, target: Path, replace: bool) -> None:
    """Rename `staging` to `target`; with `replace`, swap out an existing directory (restored if that fails)."""
    if target.exists() and replace:
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        target.rename(old)
        try:
            staging.rename(target)
        except OSError:
            old.rename(target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)  # fails if target appeared meanwhile: never merge into it


def stage_file(path: Path, data: bytes) -> Path:
    """`data` in a temporary file beside `path`, flushed to disk; removed again if writing fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_file(path: Path, data: bytes) -> None:
    """Replace `path` with `data` in one step (temp file beside it, then rename)."""
    tmp = stage_file(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
