"""N:M semi-structured pruning (issue #27, item 4): n of every m input weights kept, the largest; the
pattern survives fine-tuning; layers it cannot divide stay dense and are named."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from torch import nn

from modelshrink.engine import compress
from modelshrink.recipe.stage_specs import parse_stage
from modelshrink.stages.prune.nm import nm_mask
from tests.conftest import FAST_EVAL, reload

DIGITS = {"kind": "digits", "image_size": 8, "channels": 3, "batch_size": 64}


def groups(weight: torch.Tensor, m: int) -> torch.Tensor:
    """The weight's groups of m along the input dimension (conv: input channels at each kernel position)."""
    return weight.detach().movedim(1, -1).reshape(-1, m)


@settings(max_examples=40, deadline=None)
@given(n_m=st.sampled_from([(1, 2), (2, 4), (1, 4), (4, 8)]), out=st.integers(1, 6), blocks=st.integers(1, 4),
       kernel=st.sampled_from([(), (1,), (3, 3)]), seed=st.integers(0, 2**16))  # fmt: skip
def test_each_group_keeps_its_n_largest_magnitudes(n_m: tuple[int, int], out: int, blocks: int, kernel: tuple,
                                                   seed: int) -> None:  # fmt: skip
    n, m = n_m
    weight = torch.randn(out, blocks * m, *kernel, generator=torch.Generator().manual_seed(seed))
    mask = nm_mask(weight, n, m)
    kept, all_groups = groups(mask, m), groups(weight, m).abs()
    assert (kept.sum(dim=1) == n).all()
    smallest_kept = all_groups[kept].reshape(-1, n).min(dim=1).values
    assert (smallest_kept >= all_groups[~kept].reshape(-1, m - n).max(dim=1).values).all()


def test_two_four_on_a_cnn_holds_through_finetuning_and_reload() -> None:
    result = compress(
        {"factory": "modelshrink.models.zoo:small_cnn", "kwargs": {"in_channels": 3, "width": 8}},
        [{"kind": "prune", "method": "nm"}, {"kind": "finetune", "epochs": 1, "lr": 0.01, "max_batches_per_epoch": 3}],
        data=DIGITS, evaluate=FAST_EVAL,
    )  # fmt: skip
    rebuilt = reload(result)
    layers = {name: m for name, m in rebuilt.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    for name, layer in layers.items():
        if layer.weight.shape[1] % 4:
            assert (layer.weight != 0).float().mean() > 0.9, f"{name} cannot be grouped by 4 and stays dense"
        else:
            assert ((groups(layer.weight, 4) != 0).sum(dim=1) <= 2).all(), f"{name} lost its 2:4 pattern"
    finding = " ".join(result.stages[0].notes.findings)
    assert "2:4 sparsity in" in finding and "left dense (input width not a multiple of 4): 0" in finding
    assert "only the size benefit" in finding and "to_sparse_semi_structured" in finding


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ({"method": "nm", "amount": 0.25}, "amount of method nm is 1 - n/m = 0.5"),
        ({"method": "nm", "n": 4, "m": 4}, "fewer than m"),
        ({"method": "nm", "m": 4, "n": 0}, "fewer than m"),
    ],
)
def test_nm_settings_that_contradict_themselves_are_refused(stage: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_stage({"kind": "prune", **stage})
    assert parse_stage({"kind": "prune", "method": "nm", "n": 1, "m": 4}).amount == 0.75
