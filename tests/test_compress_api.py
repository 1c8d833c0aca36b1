"""`compress`: the in-memory API `run_recipe` is built on: no files, no global state left behind."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import modelshrink
from modelshrink.checkpoint import from_bytes, to_bytes
from modelshrink.engine import compress  # noqa: F401  (imported first: some libraries draw random numbers on import)
from modelshrink.models.zoo import mlp
from modelshrink.recipe.stage_specs import UnstructuredPruneSpec
from tests.conftest import FAST_EVAL

DATA = {"kind": "synthetic", "channels": 1, "image_size": 8, "num_samples": 120, "batch_size": 32}


def test_compress_measures_every_stage_writes_nothing_and_restores_global_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    model = mlp(in_features=64, hidden=16)
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy(), torch.get_num_threads())
    stages = [UnstructuredPruneSpec(kind="prune", amount=0.5), {"kind": "finetune", "epochs": 1, "name": "ft"}]
    result = modelshrink.compress(model, stages, data=DATA, evaluate=FAST_EVAL, seed=3)
    assert [(s.name, s.kind) for s in result.stages] == [("prune1", "prune"), ("ft", "finetune")]
    assert result.final is result.stages[-1].metrics and result.final["sparsity"] > 0.4
    assert all(m["latency_ms"]["batch1_median"] > 0 for m in [result.baseline, *(s.metrics for s in result.stages)])
    assert result.stages[1].notes.training[0].label == "ft"
    assert os.listdir(tmp_path) == [], "nothing written"
    after = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1], torch.get_num_threads())
    assert torch.equal(before[0], after[0]) and before[1] == after[1] and (before[2] == after[2]).all()
    assert before[3] == after[3]


def test_compress_from_a_model_section_gives_a_rebuildable_lineage() -> None:
    source = {"factory": "modelshrink.models.zoo:mlp", "kwargs": {"in_features": 64, "hidden": 16}}
    result = modelshrink.compress(source, [{"kind": "quantize"}], data=DATA, evaluate=FAST_EVAL)
    rebuilt, lineage = from_bytes(to_bytes(result.model, result.lineage))
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(rebuilt(x), result.model(x)) and lineage.architecture["factory"] == source["factory"]


def test_compress_refuses_bad_stages_and_data_with_user_errors() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="amount"):
        modelshrink.compress(mlp(in_features=64), [{"kind": "prune", "amount": 2}], data=DATA)
    with pytest.raises(ValidationError):
        modelshrink.compress(mlp(in_features=64), [], data={"kind": "imagenet"})
