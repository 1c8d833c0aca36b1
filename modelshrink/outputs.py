"""The one output writer: every file any command writes (run, export, analyze, tune, compare's --plot and
--junit, run's --junit, report.html) goes through `claim`, so the rules below hold for all of them.

- **Checked before any work**: an output is never an input or inside one (recipes, checkpoints, data,
  reports being compared, `--compare-to`), never holds an input, is never the current directory or
  above it; its parent must be writable (the lock file proves it), so a late write cannot fail on a
  bad path after minutes of work.
- **Locked**: one writer per output (`lock.output_lock`), checked again under the lock.
- **`--force` replaces only an earlier output of the same command** (`Target.ours` recognises one); a
  secondary file without a --force of its own (`--junit`, `--plot`) replaces only a file it wrote.
- **Atomic**: a directory is built beside its target and renamed into place, files are written to a
  temporary name and renamed; several files of one claim are all staged before any is renamed.
- **Nothing half-written**: SIGTERM is turned into an interrupt while a claim is held, so the staging
  directories and temporary files are removed as they are on Ctrl-C; a full disk or any OSError while
  writing is one line naming the path, with the staging removed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from modelshrink.atomic import commit_directory, stage_directory, stage_file
from modelshrink.errors import UserError
from modelshrink.lock import output_lock

T = TypeVar("T")
Inputs = Iterable[tuple[str, Path]]  # (what it is, its path): "recipe", "checkpoint", "data", "report", ...


@dataclass(frozen=True)
class Target:
    """One output: a directory or a file, as the user named it (`option`), and how to recognise an earlier
    output of the same command there (what `--force`, or a secondary file's rewrite, may replace)."""

    path: Path
    option: str
    directory: bool
    ours: Callable[[Path], bool]
    replaces_own: bool = False  # a secondary file (--junit, --plot) rewrites its own earlier file without --force
    exists_hint: str = "pass --force to replace it"


class Interrupted(KeyboardInterrupt):
    """SIGTERM while an output is claimed: unwinds like Ctrl-C, so every staging area is cleaned up."""


class Claim:
    """The outputs a command holds: write them through here, and only here."""

    def __init__(self, targets: list[Target]):
        self.targets = targets

    def write(self, directories: dict[Path, dict[str, bytes]] | None = None, files: dict[Path, bytes] | None = None,
              *, replace: bool = False) -> None:  # fmt: skip
        """Stage every directory and file, then rename each into place: a failure while staging (a full disk)
        leaves none of them, and a `--junit` file never outlives a run directory that was not written.
        `replace` swaps out an existing directory (checked to be an earlier output of ours)."""
        staged: list[tuple[Path, Path, Callable[[Path, Path], None]]] = []  # (staging, target, commit(target, it))
        try:
            for path, contents in (directories or {}).items():
                staging = self._guarded(path, stage_directory, contents)
                staged.append((staging, path, lambda target, it: commit_directory(it, target, replace)))
            for path, data in (files or {}).items():
                staged.append((self._guarded(path, stage_file, data), path, lambda target, it: os.replace(it, target)))
            for staging, path, commit in staged:
                self._guarded(path, commit, staging)
        finally:
            for staging, _, _ in staged:  # whatever was not renamed into place
                if staging.is_dir():
                    shutil.rmtree(staging, ignore_errors=True)
                else:
                    staging.unlink(missing_ok=True)

    def _guarded(self, path: Path, write: Callable[..., T], *args: Any) -> T:
        """`write(path, *args)`, a failure of which is one line naming the output (`_writing`)."""
        return _writing(self._target_of(path), lambda: write(path, *args))

    def _target_of(self, path: Path) -> Target:
        for target in self.targets:
            if path == target.path or (target.directory and path.is_relative_to(target.path)):
                return target
        raise KeyError(f"{path} was not claimed")  # a bug of ours: every write is claimed first


@contextmanager
def claim(targets: list[Target], inputs: Inputs = (), *, force: bool = False) -> Iterator[Claim]:
    """Check every target against the rules, lock each, and hold them (SIGTERM unwinds) while the command
    works and writes."""
    known = [(label, Path(path)) for label, path in inputs]
    for target in targets:
        check(target, known, force)
        for other in targets:
            if other is not target and other.directory and target.path.resolve().is_relative_to(other.path.resolve()):
                raise UserError(f"{target.option}: {target.path} is inside {other.path}, which is written as a whole; "
                                "choose a path outside it")  # fmt: skip
    with ExitStack() as stack:
        for target in targets:
            stack.enter_context(output_lock(target.path, target.option))
            check(target, known, force)  # again under the lock: another command may have written it meanwhile
        stack.enter_context(_sigterm_interrupts())
        yield Claim(targets)


def check(target: Target, inputs: list[tuple[str, Path]], force: bool) -> None:
    """Refuse, before any work, an output that would overwrite or delete what it must not."""
    path, option = target.path, target.option
    if path.is_symlink() and not path.exists():
        raise UserError(f"{option}: {path} is a symbolic link to nothing; remove it or choose another path")
    if target.directory and path.is_symlink():
        raise UserError(f"{option}: {path} is a symbolic link; name the directory it points to")
    if path.exists() and path.is_dir() != target.directory:
        kind = "directory" if target.directory else "file"
        raise UserError(f"{option}: {path} exists and is not a {kind}")
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise UserError(f"{option}: {path} is the current directory or one above it; choose a new one")
    for label, input_path in inputs:
        where = input_path.resolve()
        if where == resolved or where.is_relative_to(resolved):
            raise UserError(f"{option}: {path} is or holds the input {label} {input_path}; choose another path")
        if where.is_dir() and resolved.is_relative_to(where):
            raise UserError(f"{option}: {path} is inside the input {label} {input_path}; choose another path")
    if not path.exists():
        return
    if not (force or target.replaces_own):
        raise UserError(f"{option}: {path} already exists; {target.exists_hint}")
    if not target.ours(path):
        raise UserError(f"{option}: {path} was not written by modelshrink (not an earlier output of this command); "
                        "it replaces only those, so choose a new one")  # fmt: skip


def _writing(target: Target, write: Callable[[], T]) -> T:
    """One line naming the path for a write that fails (a full disk, a read-only mount); the atomic
    helpers have already removed what they staged."""
    try:
        return write()
    except OSError as exc:
        raise UserError(f"{target.option}: cannot write {target.path} ({exc.strerror or exc})") from None


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: Any) -> None:
        raise Interrupted(f"stopped by signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------- how each command knows its own outputs
def run_directory(path: Path) -> Target:
    return Target(path, "output.dir", directory=True, ours=_holds_our_report)


def analysis_directory(path: Path) -> Target:
    return Target(path, "--output", directory=True, ours=_holds("sensitivity.json"))


def search_directory(path: Path) -> Target:
    earlier = (_holds("study.journal"), _holds("trials.json"))  # a search's journal is there from its first trial
    return Target(path, "--output", directory=True, ours=lambda p: any(holds(p) for holds in earlier),
                  exists_hint="pass --resume to continue it, or --force to start over")  # fmt: skip


def junit_file(path: Path) -> Target:
    """Rewritten each time (CI keeps one path), but only over JUnit XML that modelshrink wrote."""
    return Target(path, "--junit", directory=False, replaces_own=True,
                  ours=_starts_with(b"<?xml", containing=b'<testsuites name="modelshrink"'))  # fmt: skip


def picture_file(path: Path) -> Target:
    """A --plot PNG: rewritten only over a picture we drew (`plots` stamps its PNGs' Software field)."""
    return Target(path, "--plot", directory=False, replaces_own=True,
                  ours=_starts_with(b"\x89PNG", containing=PICTURE_MARK))  # fmt: skip


def export_file(path: Path) -> Target:
    """An exported model replaces (with --force) only a file of its own format, known by its first bytes: an
    ONNX protobuf, an OpenVINO IR (.xml, and the .bin beside an IR), a .pt2 zip; never a recipe or a .pt."""
    return Target(path, "--output", directory=False, ours=_EXPORT_FORMATS.get(path.suffix, lambda _: False))


PICTURE_MARK = b"modelshrink"


def _holds_our_report(path: Path) -> bool:
    try:
        report = json.loads((path / "report.json").read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(report, dict) and "schema_version" in report and "recipe" in report


def _holds(name: str) -> Callable[[Path], bool]:
    return lambda path: path.is_dir() and (path / name).is_file()


def _starts_with(prefix: bytes, containing: bytes) -> Callable[[Path], bool]:
    def recognise(path: Path) -> bool:
        if path.is_symlink():  # replacing the link would not replace what it points to: not ours to judge
            return False
        try:
            with open(path, "rb") as fh:
                head = fh.read(4096)
        except OSError:
            return False
        return head.startswith(prefix) and containing in head

    return recognise


_OPENVINO_IR = _starts_with(b"<?xml", b"<net ")


def _openvino_weights(path: Path) -> bool:
    """An IR's .bin is known by the .xml beside it (weights carry no header of their own)."""
    return path.is_file() and not path.is_symlink() and _OPENVINO_IR(path.with_suffix(".xml"))


_EXPORT_FORMATS: dict[str, Callable[[Path], bool]] = {
    ".onnx": _starts_with(b"\x08", b""),  # a ModelProto begins with its ir_version
    ".xml": _OPENVINO_IR,
    ".bin": _openvino_weights,
    ".pt2": _starts_with(b"PK\x03\x04", b""),
}


def clear(directory: Path, names: Iterable[str]) -> None:
    """Remove an earlier output's files (`tune --force` starts a search with no earlier winner beside it)."""
    for name in names:
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
