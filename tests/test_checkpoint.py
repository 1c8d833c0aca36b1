"""Checkpoints reload without the recipe and without unpickling code; model sources load safely."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import modelshrink
from modelshrink.checkpoint import to_bytes
from modelshrink.errors import UserError
from modelshrink.lineage import Lineage
from modelshrink.loading import load_model
from modelshrink.models.zoo import mlp
from modelshrink.recipe.schema import ModelSpec
from modelshrink.stages.quantize.dynamic import QuantizeDynamic

ARCH = {"factory": "modelshrink.models.zoo:mlp", "kwargs": {"in_features": 16, "hidden": 32, "num_classes": 4}}


def compressed_checkpoint(path: Path) -> tuple[torch.nn.Module, Path]:
    """An MLP with zeroed weights and dynamic int8 Linears, saved in our format."""
    model = mlp(**ARCH["kwargs"]).eval()
    with torch.no_grad():
        model[1].weight[:, :8] = 0
    transform = QuantizeDynamic(["1", "3"], "qint8")
    model = transform.replay(model)
    path.write_bytes(to_bytes(model, Lineage(ARCH, [transform]), (16,)))
    return model, path


def test_reload_in_a_fresh_process_gives_the_same_outputs(tmp_path: Path) -> None:
    model, path = compressed_checkpoint(tmp_path / "model.pt")
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))
    torch.save(x, tmp_path / "x.pt")
    torch.save(model(x), tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import torch, modelshrink
        model = modelshrink.load({str(path)!r})
        x = torch.load({str(tmp_path / "x.pt")!r}, weights_only=True)
        expected = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
        assert type(model[1]).__name__ == "Linear" and "quantized" in type(model[1]).__module__
        assert torch.equal(model(x), expected), (model(x) - expected).abs().max()
        print("same")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "same"


def test_full_model_pickle_is_refused_unless_opted_in(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(mlp(in_features=16, hidden=8, num_classes=4), path)
    with pytest.raises(UserError, match=r"pickled Python objects.*allow_pickle"):
        load_model(ModelSpec(checkpoint=path))
    model, lineage = load_model(ModelSpec(checkpoint=path, allow_pickle=True))
    assert lineage.pickled and model(torch.randn(1, 16)).shape == (1, 4)


def test_state_dict_with_architecture_and_ddp_prefix(tmp_path: Path) -> None:
    source = mlp(**ARCH["kwargs"])
    path = tmp_path / "sd.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    spec = ModelSpec(factory=ARCH["factory"], kwargs=ARCH["kwargs"], checkpoint=path)
    model, lineage = load_model(spec)
    assert torch.equal(model[1].weight, source[1].weight) and lineage.architecture == ARCH
    with pytest.raises(UserError, match=r"plain state_dict; add model\.torchvision or model\.factory"):
        load_model(ModelSpec(checkpoint=path))


def test_safetensors_source_and_shape_mismatch_message(tmp_path: Path) -> None:
    source = mlp(**ARCH["kwargs"])
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model, _ = load_model(ModelSpec(factory=ARCH["factory"], kwargs=ARCH["kwargs"], checkpoint=path))
    assert torch.equal(model[3].weight, source[3].weight)
    wrong = ModelSpec(factory=ARCH["factory"], kwargs={**ARCH["kwargs"], "num_classes": 7}, checkpoint=path)
    with pytest.raises(UserError, match=r"shape mismatch: 5.weight \(4, 32\) vs \(7, 32\)"):
        load_model(wrong)


def test_garbage_file_and_missing_file_are_user_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a PyTorch checkpoint"):
        modelshrink.load(junk)
    with pytest.raises(UserError, match="file not found"):
        modelshrink.load(tmp_path / "absent.pt")


def test_our_checkpoint_as_a_source_keeps_its_lineage(tmp_path: Path) -> None:
    model, path = compressed_checkpoint(tmp_path / "model.pt")
    loaded, lineage = load_model(ModelSpec(checkpoint=path))
    assert lineage.architecture == ARCH and [t.kind for t in lineage.transforms] == ["quantize_dynamic"]
    x = torch.randn(3, 16)
    assert torch.equal(loaded(x), model(x))


def test_transform_records_are_typed_and_versioned(tmp_path: Path) -> None:
    from modelshrink.errors import UserError
    from modelshrink.lineage import from_record

    _, path = compressed_checkpoint(tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["transforms"] == [
        {"kind": "quantize_dynamic", "version": 1, "modules": ["1", "3"], "dtype": "qint8", "per_channel": False}
    ]
    old = {"kind": "quantize_dynamic", "modules": ["1"], "dtype": "qint8"}  # written before records had versions
    assert from_record(old, "x.pt") == QuantizeDynamic(["1"], "qint8", per_channel=False)
    with pytest.raises(UserError, match="transform 'quantize_dynamic' version 2 is newer"):
        from_record({**old, "version": 2}, "x.pt")
    with pytest.raises(UserError, match=r"x\.pt: damaged 'quantize_dynamic' transform"):
        from_record({"kind": "quantize_dynamic", "layers": ["1"]}, "x.pt")
    with pytest.raises(UserError, match="unknown transform 'prune_heads'"):
        from_record({"kind": "prune_heads"}, "x.pt")
