"""Training across nodes with torchrun's c10d rendezvous (issue #28): two "nodes" of one process each on
loopback make the model one process makes (the recipe's batch is the global batch), and a run whose
node was killed resumes on both nodes to that same model."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import modelshrink
from tests.conftest import tiny_recipe, write_recipe

ROOT = Path(__file__).parents[2]


def digits_recipe(tmp_path: Path, epochs: int) -> Path:
    """An MLP trained on the bundled digits (no BatchNorm: each rank's batch statistics would differ), by SGD:
    AdamW divides by the square root of tiny second moments, which turns the last bits of a sum taken in
    another order into different steps; SGD keeps two runs as close as their gradients are."""
    recipe = tiny_recipe(
        tmp_path,
        model={"factory": "modelshrink.models.zoo:mlp", "kwargs": {"in_features": 64, "hidden": 256}},
        data={"kind": "digits", "channels": 1, "image_size": 8, "batch_size": 64},
        stages=[{"kind": "finetune", "epochs": epochs, "lr": 0.05, "optimizer": "sgd", "keep_best": False}],
        evaluate={"latency": {"batch_size": 4, "warmup": 0, "iterations": 1}},
    )
    return write_recipe(tmp_path / "digits.yaml", recipe)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node(recipe: Path, out: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    """One node: torchrun's agent with one worker, joining the rendezvous on loopback (the documented command)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--max-restarts", "0",
               "-m", "modelshrink", "run", str(recipe), "-o", str(out), *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, cwd=recipe.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def kill_node(pid: int) -> None:
    """SIGKILL a node: torchrun's agent and its workers (which torchrun starts in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    for each in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, signal.SIGKILL)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return modelshrink.load(out / "model.pt").state_dict()


def assert_same_model(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-4), f"{key}: {(a[key] - b[key]).abs().max()}"


@pytest.mark.slow  # four two-node runs of a few seconds each, plus torchrun's start-up
def test_two_nodes_make_the_one_node_model_and_resume_after_a_node_is_killed(tmp_path: Path) -> None:
    recipe = digits_recipe(tmp_path, epochs=60)  # ~9 s of training on 2 cores: time to kill a node in it
    alone = subprocess.run([sys.executable, "-m", "modelshrink", "run", str(recipe), "-o", str(tmp_path / "one")],
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                           timeout=600)  # fmt: skip
    assert alone.returncode == 0, alone.stderr.decode()

    port = free_port()
    nodes = [node(recipe, tmp_path / "two", port) for _ in range(2)]
    outputs = [n.communicate(timeout=600)[0].decode() for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(outputs)
    assert_same_model(weights(tmp_path / "two"), weights(tmp_path / "one"))

    # kill one node while rank 0 has saved an epoch, then start both again with --resume
    out, port = tmp_path / "killed", free_port()
    nodes = [node(recipe, out, port) for _ in range(2)]
    epoch_state = tmp_path / ".killed.resume" / "epoch.pt"
    deadline = time.monotonic() + 300
    while not epoch_state.exists() and time.monotonic() < deadline and all(n.poll() is None for n in nodes):
        time.sleep(0.05)
    assert epoch_state.exists(), "no epoch was saved"
    killed_at = time.monotonic()
    kill_node(nodes[1].pid)
    survivor = nodes[0].communicate(timeout=600)[0].decode()
    assert nodes[0].returncode != 0, f"killed {killed_at - deadline + 300:.1f}s in: {survivor[-3000:]}"
    assert not (out / "model.pt").exists()
    assert (tmp_path / ".killed.resume" / "state.pt").exists(), f"the progress is kept: {survivor[-3000:]}"
    port = free_port()
    nodes = [node(recipe, out, port, "--resume") for _ in range(2)]
    outputs = [n.communicate(timeout=600)[0].decode() for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(outputs)
    assert "resuming after stage" in "".join(outputs)
    assert_same_model(weights(out), weights(tmp_path / "one"))
