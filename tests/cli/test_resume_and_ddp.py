"""Interrupted runs resume to the same result; DDP keeps ranks identical and writes one report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import modelshrink
from modelshrink import resume as resume_module
from tests.conftest import output_files, tiny_recipe, write_recipe

STAGES = [
    {"kind": "finetune", "name": "a", "epochs": 2, "lr": 0.01},
    {"kind": "prune", "amount": 0.3},
    {"kind": "finetune", "name": "b", "epochs": 3, "lr": 0.005, "schedule": "onecycle"},
]


def test_resume_after_a_crash_gives_the_same_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, stages=STAGES))
    modelshrink.run_recipe(full, output_dir=tmp_path / "uninterrupted")

    save_epoch = resume_module.ResumeStore.save_epoch

    def crash_in_stage_b(self, stage, state):
        save_epoch(self, stage, state)
        if stage == "b" and state["epoch"] == 2:
            raise KeyboardInterrupt  # killed mid-stage, after epoch 2 was saved

    monkeypatch.setattr(resume_module.ResumeStore, "save_epoch", crash_in_stage_b)
    with pytest.raises(KeyboardInterrupt):
        modelshrink.run_recipe(full, output_dir=tmp_path / "resumed")
    assert not (tmp_path / "resumed").exists() and (tmp_path / ".resumed.resume" / "epoch.pt").is_file()
    monkeypatch.setattr(resume_module.ResumeStore, "save_epoch", save_epoch)

    report = modelshrink.run_recipe(full, output_dir=tmp_path / "resumed", resume=True)
    expected = modelshrink.load(tmp_path / "uninterrupted" / "model.pt").state_dict()
    resumed = modelshrink.load(tmp_path / "resumed" / "model.pt").state_dict()
    for key, value in expected.items():
        assert torch.equal(value, resumed[key]), key
    assert [s["name"] for s in report["stages"]] == ["a", "prune2", "b"]
    assert not (tmp_path / ".resumed.resume").exists(), "finished runs clean up"


WORKER = """
import sys, torch
from modelshrink import distributed
from modelshrink.data import build_data
from modelshrink.models.zoo import small_cnn
from modelshrink.recipe.schema import SyntheticData
from modelshrink.recipe.stage_specs import TrainingSettings
from modelshrink.train import fit
distributed.init_from_env()
torch.manual_seed(0)
data = build_data(SyntheticData(kind="synthetic", channels=1, image_size=8, num_samples=128, batch_size=16), 0)
model = small_cnn(in_channels=1, width=8)
fit(model, data, TrainingSettings(epochs=2, lr=0.01), label="ddp")
torch.save(model.state_dict(), sys.argv[1] + f"/rank{distributed.rank()}.pt")
"""


def test_two_process_ddp_keeps_weights_identical_on_both_ranks(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env_base = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517"}
    import os

    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path)],
            env={**os.environ, **env_base, "RANK": str(r), "LOCAL_RANK": str(r)},
            cwd=Path(__file__).parents[2],
        )
        for r in range(2)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    start = {
        k: v for k, v in __import__("modelshrink.models.zoo", fromlist=["x"]).small_cnn(1, 10, 8).state_dict().items()
    }
    assert any(not torch.equal(rank0[k], start[k]) for k in rank0), "training changed the weights"
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key


@pytest.mark.slow  # two processes, ~10 s on 2 cores
def test_cli_nproc_2_writes_one_valid_report(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, stages=STAGES[:2]))
    result = subprocess.run(
        [sys.executable, "-m", "modelshrink.cli", "run", str(recipe), "--nproc", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [s["name"] for s in report["stages"]] == ["a", "prune2"] and report["passed"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == output_files()
    assert json.loads((tmp_path / "out" / "report.json").read_text())["final"] == report["final"]


def test_nproc_runs_every_rank_with_the_options_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rank of `--nproc` runs the command as parsed: every option reaches it without a list kept by hand."""
    from typer.testing import CliRunner

    from modelshrink import distributed
    from modelshrink.cli import app

    launched: list[list[str]] = []
    monkeypatch.setattr(distributed, "launch_local", lambda nproc, argv: launched.append([str(nproc), *argv]) or 0)
    given = ["run", "r.yaml", "--nproc", "2", "-o", "out", "--force", "--set", "seed=1", "--set", "name=x", "--json",
             "--trust", "mine", "--compare-to", "last.json", "--junit", "j.xml", "-v"]  # fmt: skip
    result = CliRunner().invoke(app, given)
    assert result.exit_code == 0, result.output
    [[nproc, *argv]] = launched
    assert nproc == "2" and argv[:2] == ["run", "r.yaml"] and "--nproc" not in argv
    options = {argv[i]: argv[i + 1] for i in range(2, len(argv) - 1) if argv[i].startswith("--")}
    assert options["--output"] == "out" and options["--compare-to"] == "last.json" and options["--junit"] == "j.xml"
    assert options["--trust"] == "mine" and [argv[i + 1] for i, a in enumerate(argv) if a == "--set"] == [
        "seed=1", "name=x"]  # fmt: skip
    assert {"--force", "--json", "--verbose"} <= set(argv) and "--resume" not in argv
