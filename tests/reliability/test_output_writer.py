"""One output writer for every command (issue #24, item 2): no output over or inside an input, secondary
files checked before any work and written with the rest, --force only over an earlier output of the same
command, `tune --force` leaves no earlier winner, a full disk is one line, SIGTERM leaves nothing half-written."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelshrink import outputs
from modelshrink.cli import app
from tests.conftest import tiny_recipe, write_recipe
from tests.test_tune import searched

runner = CliRunner()


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run's directory (report.json, model.pt), copied by each test."""
    tmp = tmp_path_factory.mktemp("made")
    recipe = write_recipe(tmp / "r.yaml", tiny_recipe(tmp, stages=[]))
    assert runner.invoke(app, ["run", str(recipe)]).exit_code == 0
    return tmp / "out"


def digest(root: Path) -> dict[str, str]:
    files = (p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def refused(argv: list[str], text: str) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], result.stderr
    assert "baseline" not in result.stderr, "refused before any work"


def test_no_command_writes_over_or_into_an_input(tmp_path: Path, made: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        shutil.copytree(made, tmp_path / name)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, stages=[]))
    gated = tiny_recipe(tmp_path, stages=[], constraints={"max_regression": {"accuracy": 0.01}})
    write_recipe(tmp_path / "gated.yaml", gated)
    (tmp_path / "data").mkdir()
    before = digest(tmp_path)
    refused(["compare", "a/report.json", "b/report.json", "--junit", "b/report.json"], "is or holds the input report")
    refused(["compare", "a/report.json", "b/report.json", "--plot", "a/report.json"], "is or holds the input report")
    refused(["compare", "a/report.json", "b/report.json", "--plot", "a"], "exists and is not a file")
    refused(["run", "r.yaml", "--junit", "r.yaml"], "is or holds the input recipe")
    refused(["run", "r.yaml", "--junit", "out/gates.xml"], "which is written as a whole")
    refused(["run", "r.yaml", "--junit", "a/report.json"], "not written by modelshrink")
    refused(["run", "gated.yaml", "--compare-to", "a/report.json", "-o", "a", "--force"], "holds the input report")
    refused(["export", "a/model.pt", "-o", "r.yaml", "--force"], "must end in .onnx")
    refused(["export", "a/model.pt", "-o", "a", "--force"], "must end in .onnx")
    refused(["export", "a/model.pt", "--format", "openvino", "-o", "out.bin"], "must end in .xml")
    refused(["analyze", "r.yaml", "-o", ".", "--force"], "current directory")
    refused(["analyze", "r.yaml", "-o", str(tmp_path), "--force"], "current directory")
    searched_stages = [{"kind": "prune", "amount": {"search": [0.1, 0.2]}}]
    write_recipe(tmp_path / "data" / "r.yaml", tiny_recipe(tmp_path, stages=searched_stages))
    refused(["analyze", "data/r.yaml", "-o", "data", "--force"], "is or holds the input recipe")
    refused(["tune", "data/r.yaml", "-o", "data", "--force"], "is or holds the input recipe")
    (tmp_path / "data" / "r.yaml").unlink()
    assert digest(tmp_path) == before, "every input byte for byte as it was"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "data", "gated.yaml", "r.yaml"], "nothing new"
    assert recipe.exists()


def test_secondary_files_are_checked_first_and_written_together(tmp_path: Path, made: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        shutil.copytree(made, tmp_path / name)
    (tmp_path / "a_file").write_text("x")
    refused(["compare", "a/report.json", "b/report.json", "--plot", "p.png", "--junit", "a_file/g.xml"],
            "not a writable directory")  # fmt: skip
    assert not (tmp_path / "p.png").exists(), "the picture is not left behind when the JUnit file cannot be written"
    real_write = outputs.stage_file

    def full_for_xml(path: Path, data: bytes) -> Path:
        if ".xml" in path.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(path, data)

    monkeypatch.setattr(outputs, "stage_file", full_for_xml)
    late = runner.invoke(app, ["compare", "a/report.json", "b/report.json", "--plot", "p.png", "--junit", "g.xml"])
    assert late.exit_code == 2 and "--junit: cannot write g.xml (No space left on device)" in late.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "a_file", "b"], "both files or neither"
    monkeypatch.setattr(outputs, "stage_file", real_write)
    (tmp_path / "gates.xml").write_text("my own notes")
    refused(["compare", "a/report.json", "b/report.json", "--junit", "gates.xml"], "not written by modelshrink")
    assert (tmp_path / "gates.xml").read_text() == "my own notes"
    (tmp_path / "gates.xml").unlink()
    for _ in range(2):  # CI keeps one path: a file of ours is rewritten, no --force needed
        result = runner.invoke(app, ["compare", "a/report.json", "b/report.json", "--junit", "gates.xml",
                                     "--plot", "p.png"])  # fmt: skip
        assert result.exit_code == 0, result.output
    assert (tmp_path / "gates.xml").read_bytes().startswith(b"<?xml") and (tmp_path / "p.png").exists()
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, stages=[]))
    refused(["run", str(recipe), "--junit", "p.png"], "not written by modelshrink")
    refused(["run", str(recipe), "--junit", "a_file/g.xml"], "not a writable directory")
    assert runner.invoke(app, ["run", str(recipe), "--junit", "gates.xml"]).exit_code == 0
    assert b'<testsuite name="modelshrink: tiny"' in (tmp_path / "gates.xml").read_bytes()


def test_tune_force_leaves_no_earlier_winner_beside_a_failed_search(tmp_path: Path, recipe_file) -> None:
    out = tmp_path / "search"
    assert runner.invoke(app, ["tune", str(searched(recipe_file, 0.58)), "-o", str(out), "--objective", "macs"]
                         ).exit_code == 0  # fmt: skip
    assert (out / "tuned.yaml").exists() and (out / "best" / "report.json").exists()
    result = runner.invoke(app, ["tune", str(searched(recipe_file, 0.99)), "-o", str(out), "--force"])
    assert result.exit_code == 1, result.output
    written = ["closest.yaml", "study.journal", "trials.json", "tune.md", "tune.png"]
    assert sorted(p.name for p in out.iterdir()) == written, "a new study: the earlier one is cleared too"


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, stages=[]))

    real_fsync, writes = os.fsync, []

    def full_at(stop: int) -> object:
        def fsync(fd: int) -> None:  # every staged file is flushed: the disk fills up at the `stop`th
            writes.append(fd)
            if len(writes) == stop:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        return fsync

    monkeypatch.setattr("modelshrink.atomic.os.fsync", full_at(10**9))
    assert runner.invoke(app, ["run", str(recipe), "-o", "counted"]).exit_code == 0
    total = len(writes)  # the resume state's files, then the outputs'
    shutil.rmtree(tmp_path / "counted")
    # the first progress file kept for --resume, then one of the outputs
    for stop, said in ((1, "cannot write the progress kept for --resume"), (total - 1, "output.dir: cannot write")):
        writes.clear()
        monkeypatch.setattr("modelshrink.atomic.os.fsync", full_at(stop))
        result = runner.invoke(app, ["run", str(recipe)])
        assert result.exit_code == 2, result.output
        last = result.stderr.splitlines()[-1]
        assert last.startswith(f"error: {said}") and last.endswith("(No space left on device)"), last
        assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"], "no staging directory, lock or resume state"


def test_a_directory_in_the_way_of_the_lock_is_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, stages=[]))
    (tmp_path / ".out.lock").mkdir()
    refused(["run", str(recipe)], "is in the way of")


SIGTERM_DURING_WRITE = """
import os, signal, sys
real = os.fsync
def fsync(fd):
    os.kill(os.getpid(), signal.SIGTERM)  # arrives while the output directory is being staged
    real(fd)
os.fsync = fsync
from modelshrink import outputs
from modelshrink.cli import app
sys.argv = ["modelshrink", "run", "r.yaml"]
app()
"""


def test_sigterm_while_writing_leaves_no_temporary_files(tmp_path: Path) -> None:
    write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, stages=[]))
    done = subprocess.run([sys.executable, "-c", SIGTERM_DURING_WRITE], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(Path.cwd())})  # fmt: skip
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: interrupted"), done.stderr
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left in (["r.yaml"], [".out.resume", "r.yaml"]), left  # progress for --resume may stay, nothing else


def test_an_output_directory_gets_the_users_umask_not_a_temporary_directorys_0700(tmp_path: Path) -> None:
    from modelshrink.atomic import commit_directory, stage_directory

    previous = os.umask(0o027)
    try:
        target = tmp_path / "out"
        commit_directory(stage_directory(target, {"a.txt": b"x"}), target, replace=False)
    finally:
        os.umask(previous)
    assert target.stat().st_mode & 0o777 == 0o750, "a teammate in the group can read the run's outputs"
