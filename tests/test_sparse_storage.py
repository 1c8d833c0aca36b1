"""Sparse tensors are stored as a bitmask plus their non-zero values (issue #27, item 1): exact reloads,
the documented layout, the size targets on a real architecture, and one line for a damaged record."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import modelshrink
from modelshrink.checkpoint import DENSE_FORMAT_VERSION, FORMAT_VERSION, from_bytes, to_bytes
from modelshrink.cli import app
from modelshrink.errors import UserError
from modelshrink.lineage import Lineage
from modelshrink.models.zoo import mlp
from modelshrink.recipe.stage_specs import UnstructuredPruneSpec
from modelshrink.sparse_storage import KEY, pack, unpack, worth_packing
from modelshrink.stages.prune.unstructured import prune_unstructured, storage_finding
from modelshrink.stages.quantize.dynamic import QuantizeDynamic

RESNET = {"torchvision": "resnet18", "kwargs": {"num_classes": 10}}
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8, torch.int64]


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(0, 9), min_size=0, max_size=4),
    dtype=st.sampled_from(DTYPES),
    keep=st.floats(0, 1),
    seed=st.integers(0, 2**16),
)
def test_pack_then_unpack_gives_the_same_tensor(shape: list[int], dtype: torch.dtype, keep: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    values = (torch.randn(shape, generator=generator) * 50).to(dtype)
    tensor = torch.where(torch.rand(shape, generator=generator) < keep, values, torch.zeros((), dtype=dtype))
    restored = unpack(pack(tensor), "t")
    assert restored.dtype == tensor.dtype and restored.shape == tensor.shape
    assert torch.equal(restored, tensor)


def test_the_layout_is_compressed_tensors_sparse_bitmask() -> None:
    """Bits are packed along each row, least significant first; values in row-major order."""
    record = pack(torch.tensor([[0.0, 1.5, 0.0, 2.0], [3.0, 0.0, 0.0, 0.0]]))[KEY]
    assert record["shape"] == [2, 4]
    assert record["compressed"].tolist() == [1.5, 2.0, 3.0]
    assert record["bitmask"].tolist() == [[0b1010], [0b0001]]
    assert set(record) == {"shape", "compressed", "bitmask"}


@pytest.mark.parametrize("per_channel", [False, True])
def test_quantized_tensors_come_back_bit_exact(per_channel: bool) -> None:
    weight = torch.randn(6, 40, generator=torch.Generator().manual_seed(0))
    weight[:, ::2] = 0
    if per_channel:
        q = torch.quantize_per_channel(weight, torch.rand(6) + 0.01, torch.zeros(6, dtype=torch.long), 0, torch.qint8)
    else:
        q = torch.quantize_per_tensor(weight, 0.02, 0, torch.qint8)
    restored = unpack(pack(q), "q")
    assert restored.dtype == q.dtype and restored.qscheme() == q.qscheme()
    assert torch.equal(restored.int_repr(), q.int_repr())
    assert torch.equal(restored.dequantize(), q.dequantize())


def _pruned_resnet(amount: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    if amount:
        prune_unstructured(model, UnstructuredPruneSpec(kind="prune", method="unstructured", amount=amount))
    return model


def _checkpoint(model: torch.nn.Module) -> bytes:
    return to_bytes(model, Lineage(RESNET), (3, 32, 32))


@pytest.fixture(scope="module")
def dense_bytes() -> int:
    return len(_checkpoint(_pruned_resnet(0)))


@pytest.mark.parametrize(("amount", "at_most"), [(0.2, 0.85), (0.9, 0.15)])
def test_pruned_checkpoints_shrink_and_reload_exactly(amount: float, at_most: float, dense_bytes: int) -> None:
    model = _pruned_resnet(amount)
    blob = _checkpoint(model)
    assert len(blob) <= at_most * dense_bytes, f"{len(blob) / dense_bytes:.3f}x of the dense checkpoint"
    rebuilt, _ = from_bytes(blob)
    restored = rebuilt.state_dict()
    assert all(torch.equal(tensor, restored[name]) for name, tensor in model.state_dict().items())


def test_a_dense_checkpoint_keeps_the_format_older_releases_read(tmp_path: Path) -> None:
    dense = torch.nn.Linear(64, 64)
    path = tmp_path / "dense.pt"
    path.write_bytes(to_bytes(dense, Lineage({"factory": "torch.nn:Linear", "kwargs": {}})))
    assert torch.load(path, weights_only=True)["format_version"] == DENSE_FORMAT_VERSION
    pruned = _pruned_resnet(0.5)
    assert torch.load(_write(tmp_path, _checkpoint(pruned)), weights_only=True)["format_version"] == FORMAT_VERSION


def test_a_quantized_linear_packs_inside_its_packed_params(tmp_path: Path) -> None:
    """Dynamic int8 Linears save (weight, bias) as a tuple: the weight in it is packed too."""
    arch = {"factory": "modelshrink.models.zoo:mlp", "kwargs": {"in_features": 256, "hidden": 256, "num_classes": 4}}
    model = mlp(**arch["kwargs"]).eval()
    with torch.no_grad():
        model[1].weight[:, ::2] = 0
    transform = QuantizeDynamic(["1", "3"], "qint8")
    model = transform.replay(model)
    path = _write(tmp_path, to_bytes(model, Lineage(arch, [transform]), (256,)))
    entry = torch.load(path, weights_only=True)["state_dict"]["1._packed_params._packed_params"]
    assert KEY in entry[0]
    x = torch.randn(3, 256)
    assert torch.equal(modelshrink.load(path)(x), model(x))


def test_inspect_shows_the_bytes_each_layer_takes_in_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, _checkpoint(_pruned_resnet(0.9)))
    info = modelshrink.inspect(path)
    rows = {row["name"]: row for row in info["layers"]}
    conv = rows["layer4.1.conv2"]
    assert conv["sparsity"] > 0.5 and conv["stored_bytes"] < 0.5 * conv["bytes"]
    assert rows["bn1"]["stored_bytes"] == rows["bn1"]["bytes"]  # dense: stored as it is
    totals = info["totals"]
    assert totals["stored_bytes"] < 0.15 * totals["tensor_bytes"]
    assert totals["stored_bytes"] <= info["file_bytes"] < totals["stored_bytes"] * 1.05
    output = CliRunner().invoke(app, ["inspect", str(path)]).output
    assert "stored" in output


def test_the_pruning_finding_states_the_size_it_bought() -> None:
    model = _pruned_resnet(0.9)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    finding = storage_finding(convs)
    ratio = float(finding.split("take ")[1].split("x")[0])
    assert 0.1 < ratio < 0.15 and "no faster" in finding
    dense = torch.nn.Linear(64, 64)
    assert not worth_packing(dense.weight.detach())
    assert "too few zeros" in storage_finding([dense])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: r.update(bitmask=r["bitmask"][:-1]), "its bitmask does not fit shape"),
        (lambda r: r.update(compressed=r["compressed"][:-1]), "values for"),
        (lambda r: r.update(shape="64x64"), "is not a list of sizes"),
        (lambda r: r.update(dtype="qint4"), "dtype 'qint4'"),
        (lambda r: r.update(dtype=["qint8"]), "dtype ['qint8']"),  # unhashable: no lookup crash
        # strides of 0: one stored byte claiming the whole bitmask (a huge one costs nothing in the file)
        (lambda r: r.update(bitmask=torch.zeros(1, dtype=torch.uint8).expand(r["bitmask"].shape)), "its bitmask"),
    ],
)
def test_a_damaged_sparse_record_is_one_line_and_exit_2(tmp_path: Path, damage: Callable, message: str) -> None:
    payload = torch.load(_write(tmp_path, _checkpoint(_pruned_resnet(0.9))), weights_only=True)
    damage(payload["state_dict"]["fc.weight"][KEY])
    path = tmp_path / "damaged.pt"
    torch.save(payload, path)
    for command in (["inspect", str(path)], ["inspect", str(path), "--json"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, result.output
        assert message in result.output and "fc.weight" in result.output
        assert len(result.output.strip().splitlines()) == 1
    with pytest.raises(UserError, match="damaged checkpoint"):
        modelshrink.load(path)


def _write(tmp_path: Path, blob: bytes) -> Path:
    path = tmp_path / "model.pt"
    path.write_bytes(blob)
    return path
