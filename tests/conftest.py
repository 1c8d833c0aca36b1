"""Shared fixtures: tiny models and recipes that run in a second or two on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

TINY_EVAL = {"latency": {"batch_size": 4, "warmup": 1, "iterations": 3}}


def tiny_recipe(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    """A recipe dict for a small MLP on synthetic 1x8x8 data; any section can be replaced."""
    recipe: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "model": {"factory": "modelshrink.models.zoo:mlp", "kwargs": {"in_features": 64, "hidden": 32}},
        "data": {"kind": "synthetic", "channels": 1, "image_size": 8, "num_samples": 120, "batch_size": 32},
        "stages": [{"kind": "prune", "amount": 0.5}],
        "evaluate": TINY_EVAL,
        "output": {"dir": str(tmp_path / "out")},
    }
    recipe.update(sections)
    return recipe


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture
def recipe_file(tmp_path: Path):
    def make(**sections: Any) -> Path:
        return write_recipe(tmp_path / "recipe.yaml", tiny_recipe(tmp_path, **sections))

    return make


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


FAST_EVAL = {"latency": {"batch_size": 2, "warmup": 0, "iterations": 1}}


def tensor_data(inputs: torch.Tensor, labels: torch.Tensor | None = None, num_classes: int = 10, **kw: Any):
    """A DataBundle over in-memory tensors (train and val alike), for `compress` in unit tests."""
    from torch.utils.data import TensorDataset

    from modelshrink.data.bundle import make_bundle

    labels = labels if labels is not None else torch.zeros(len(inputs), dtype=torch.long)
    dataset = TensorDataset(inputs, labels)
    return make_bundle(
        dataset, dataset, batch_size=kw.pop("batch_size", 32), num_workers=0, seed=0, num_classes=num_classes,
        input_shape=inputs.shape[1:], **kw,
    )  # fmt: skip


def reload(result: Any) -> torch.nn.Module:
    """A compress result's model rebuilt from its checkpoint bytes, as `modelshrink.load` would."""
    from modelshrink.checkpoint import from_bytes, to_bytes

    return from_bytes(to_bytes(result.model, result.lineage))[0]


def output_files(checkpoint: str = "model.pt") -> list[str]:
    """What a run writes into its output directory (pictures where matplotlib is installed)."""
    from modelshrink import plots

    pictures = ["layers.png", "quality_latency.png"] if plots.available() else []
    return sorted([checkpoint, "report.json", "report.md", *pictures])
