"""Compile once per artifact: a run whose final model runs compiled writes its AOTInductor package beside
the checkpoint, and `modelshrink.load` in a fresh process runs it without compiling; a package that no run
of this user's wrote (another machine, another user's cache) is not run: the model compiles as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelshrink.cli import app

RELOAD = """
import json, sys, torch
from torch._dynamo.utils import counters
import modelshrink
model = modelshrink.load(sys.argv[1])
with torch.inference_mode():
    out = model(torch.load(sys.argv[2]))
pending = model.pending  # the eager model behind the package not rebuilt for inference
weights = len(model.state_dict())  # rebuilt when asked for
print(json.dumps({"frames": counters["frames"]["total"], "out": out.tolist(), "pending": pending, "weights": weights}))
"""


def reload(checkpoint: Path, inputs: Path, cache: Path) -> tuple[dict, str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    done = subprocess.run(
        [sys.executable, "-c", RELOAD, str(checkpoint), str(inputs)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.mark.slow
def test_a_reloaded_compiled_checkpoint_runs_its_runs_package_and_a_foreign_one_compiles(
    recipe_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    stage = {"kind": "quantize", "mode": "static", "backend": "pt2e", "calibration_batches": 2}  # runs compiled
    recipe = recipe_file(
        model={"factory": "modelshrink.models.zoo:small_cnn", "kwargs": {"in_channels": 1, "width": 8}},
        stages=[stage],
    )
    result = CliRunner().invoke(app, ["run", str(recipe), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    out = tmp_path / "out"
    assert (out / "model.compiled.pt2").is_file()
    assert any(
        f.startswith("model.compiled.pt2: the compiled model packaged with AOTInductor") for f in report["findings"]
    )

    import modelshrink

    inputs = tmp_path / "x.pt"
    x = torch.randn(3, 1, 8, 8)
    torch.save(x, inputs)
    with torch.inference_mode():
        expected = modelshrink.load(out / "model.pt")(x)  # this process compiles it

    reused, _ = reload(out / "model.pt", inputs, cache)
    assert reused["frames"] == 0, "the package ran: nothing was compiled"
    assert reused["pending"] and reused["weights"] > 0, "rebuilt only when its state_dict was asked for"
    torch.testing.assert_close(torch.tensor(reused["out"]), expected, rtol=0, atol=1e-2)  # within an int8 step

    foreign, stderr = reload(out / "model.pt", inputs, tmp_path / "another-users-cache")
    assert "model.compiled.pt2 not used (no run of yours on this machine wrote it)" in stderr
    assert foreign["frames"] > 0, "compiled on its first call, as without a package"
    assert not foreign["pending"]
    torch.testing.assert_close(torch.tensor(foreign["out"]), expected, rtol=0, atol=1e-2)  # within an int8 step


def test_records_that_are_not_plain_files_of_ours_vouch_for_nothing_and_block_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    from modelshrink import compiled_artifact

    blob, checkpoint = b"native code", b"weights"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert compiled_artifact.record(blob, checkpoint) is None
    assert compiled_artifact.usable(blob, checkpoint) is None, "a record of ours vouches"
    entry = compiled_artifact.trusted_dir() / hashlib.sha256(blob).hexdigest()
    entry.write_text("[1, 2]")
    assert compiled_artifact.usable(blob, checkpoint) == "its record is damaged (not one of ours)"
    entry.unlink()
    os.mkfifo(entry, 0o600)  # a read would block forever
    assert compiled_artifact.usable(blob, checkpoint) == "its record is not a file yours alone"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    (tmp_path / "linked" / "modelshrink").mkdir(parents=True)
    (tmp_path / "linked" / "modelshrink" / "compiled").symlink_to(elsewhere)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "linked"))
    assert "is a link" in compiled_artifact.record(blob, checkpoint)
    assert list(elsewhere.iterdir()) == [] and elsewhere.stat().st_mode & 0o777 == 0o755, "not written or chmod-ed"

    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert compiled_artifact.trusted_dir() == Path.home() / ".cache" / "modelshrink" / "compiled"
