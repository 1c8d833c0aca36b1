"""One writer per output (a run's directory, an export's file, ...): a lock file beside it that names the
holder's pid.

Two runs writing one output would share its resume directory and could leave a report of one run
beside the checkpoint of the other. Written by hand (O_EXCL create, pid inside) rather than with a
lock library because the message must name the process that holds the output, and a lock left by a
run that died must not block the next one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from modelshrink.errors import UserError


@contextmanager
def output_lock(out_dir: Path, option: str = "output.dir") -> Iterator[None]:
    """`option` is how the user named the output (output.dir, --output, --junit), for the error line."""
    resolved = out_dir.resolve()
    path = resolved.parent / f".{resolved.name}.lock"
    _make_parent(out_dir, path.parent, option)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if path.is_dir() or not path.is_file():
                raise UserError(f"{option}: {path} is in the way of {out_dir}'s lock file; remove it") from None
            holder = _holder(path)
            if holder is not None and _alive(holder):
                raise UserError(f"{option}: {out_dir} is in use by another run (pid {holder})") from None
            path.unlink(missing_ok=True)  # left by a run that died: take it over
            continue
        except OSError as exc:  # the first write of a run: an unwritable parent fails here, before any work
            raise _unwritable(out_dir, path.parent, exc, option) from None
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        break
    else:
        raise UserError(f"{option}: {out_dir} is in use by another run (its lock {path} keeps coming back)")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _make_parent(out_dir: Path, parent: Path, option: str) -> None:
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(out_dir, parent, exc, option) from None


def _unwritable(out_dir: Path, parent: Path, exc: OSError, option: str) -> UserError:
    reason = exc.strerror or type(exc).__name__
    return UserError(f"{option}: cannot write {out_dir}: its parent {parent} is not a writable directory ({reason})")


def _holder(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
