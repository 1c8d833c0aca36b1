"""Sparse tensors stored as a bitmask plus their non-zero values, so that pruning shrinks model.pt.

The layout is compressed-tensors' `sparse-bitmask` (what vLLM and llm-compressor read): per tensor its
`shape`, the non-zero values in row-major order (`compressed`) and one bit per element packed eight to a
byte along each row, least significant bit first (`bitmask`, rows = the first dimension). Its
`row_offsets` (where each row's values start) are left out: its own decompressor never reads them, and
at 50% sparsity + int8 they would cost 1% of the file. A tensor is packed only when that is smaller than
its dense bytes, so a dense model's checkpoint is unchanged.

Written here rather than imported: compressed-tensors 0.20 dropped its BitmaskTensor helpers and the
releases that have them import transformers at start-up; the packing itself is numpy's `packbits`.
What is added beyond the layout: torch.ao's qint8/quint8 tensors are packed as their integer
representation with the scales and zero points beside it (float32 / int16 where that holds them
exactly). A reload is exact: every value compares equal, NaN stays NaN; only a -0.0 (what pruning's
mask makes of a negative weight) comes back as 0.0.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from modelshrink.errors import UserError

KEY = "sparse_bitmask"
# torch.save writes each tensor's storage as its own zip record (header, alignment, pickle entry):
# two tensors in place of one cost about this much before they save anything
_OVERHEAD_BYTES = 1024
_QUANTIZED = {"qint8": torch.qint8, "quint8": torch.quint8}


def packable(tensor: Any) -> bool:
    """Dense CPU tensors of a fixed-width dtype; quantized only as torch.ao's affine int8 kinds."""
    if not isinstance(tensor, torch.Tensor) or tensor.layout != torch.strided or tensor.numel() == 0:
        return False
    if tensor.is_quantized:
        return str(tensor.dtype).removeprefix("torch.") in _QUANTIZED and tensor.qscheme() in (
            torch.per_tensor_affine,
            torch.per_channel_affine,
        )
    return tensor.dtype != torch.bool and not tensor.is_complex()


def worth_packing(tensor: torch.Tensor) -> bool:
    """True when the packed form takes fewer bytes than the dense tensor."""
    if not packable(tensor):
        return False
    values = _values_view(tensor)
    rows, cols = _rows_cols(tensor.shape)
    nonzero = int(torch.count_nonzero(values).item())
    packed = nonzero * values.element_size() + rows * math.ceil(cols / 8) + _OVERHEAD_BYTES
    return packed < values.numel() * values.element_size()


def pack(tensor: torch.Tensor) -> dict[str, Any]:
    """The sparse-bitmask record of one tensor (see the module docstring)."""
    values = _values_view(tensor).detach().contiguous()
    rows, cols = _rows_cols(tensor.shape)
    mask = (values != 0).reshape(rows, cols)
    record: dict[str, Any] = {
        "shape": list(tensor.shape),
        "compressed": values.reshape(rows, cols)[mask].clone(),
        "bitmask": torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little")),
    }
    if tensor.is_quantized:
        record.update(_quantization(tensor))
    return {KEY: record}


def unpack(packed: Mapping[str, Any], name: str) -> torch.Tensor:
    """The dense tensor a record describes; a malformed record is a damaged checkpoint, named."""
    record = packed.get(KEY)
    if not isinstance(record, Mapping):
        raise _damaged(name, "not a sparse-bitmask record")
    shape, values, bitmask = record.get("shape"), record.get("compressed"), record.get("bitmask")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _damaged(name, f"shape {shape!r} is not a list of sizes")
    # contiguous: a file's strides may be 0, which lets a few stored bytes claim a huge tensor
    if not isinstance(values, torch.Tensor) or values.dim() != 1 or values.is_quantized or not values.is_contiguous():
        raise _damaged(name, "its values are not a 1-D tensor")
    rows, cols = _rows_cols(shape)
    expected = (rows, math.ceil(cols / 8))
    if (
        not isinstance(bitmask, torch.Tensor)
        or bitmask.dtype != torch.uint8
        or tuple(bitmask.shape) != expected
        or not bitmask.is_contiguous()
    ):
        raise _damaged(name, f"its bitmask does not fit shape {shape}")
    bits = np.unpackbits(bitmask.numpy(), axis=-1, count=cols, bitorder="little")
    mask = torch.from_numpy(bits.view(bool))  # unpackbits gives 0 and 1: valid bools without a copy
    if (set_bits := int(torch.count_nonzero(mask).item())) != values.numel():
        raise _damaged(name, f"{values.numel()} values for {set_bits} set bits")
    dense = torch.zeros(shape, dtype=values.dtype).masked_scatter_(mask.reshape(shape), values)
    return _requantized(dense, record, name) if "dtype" in record else dense


def pack_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The state_dict with each tensor replaced by its record where that is smaller; tensors inside a
    tuple (a quantized Linear's `_packed_params`) too. A storage that two entries share (tied weights)
    stays dense: torch.save writes it once, two records would write it twice."""
    shared = _shared_storages(_tensors(state_dict.values()))

    def one(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return pack(value) if _storage(value) not in shared and worth_packing(value) else value
        if isinstance(value, tuple):
            return tuple(one(v) for v in value)
        return value

    return _like(state_dict, {name: one(value) for name, value in state_dict.items()})


def unpack_state_dict(state_dict: Mapping[str, Any], where: object) -> dict[str, Any]:
    """The inverse of `pack_state_dict`; `where` (the file) prefixes the message of a damaged record."""

    def one(value: Any, name: str) -> Any:
        if isinstance(value, Mapping) and KEY in value:
            try:
                return unpack(value, name)
            except UserError as exc:
                raise UserError(f"{where}: {exc}") from None
        if isinstance(value, tuple):
            return tuple(one(v, f"{name}.{i}") for i, v in enumerate(value))
        return value

    return _like(state_dict, {name: one(value, name) for name, value in state_dict.items()})


def holds_records(state_dict: Mapping[str, Any]) -> bool:
    """Whether any entry (or tuple element) is a sparse-bitmask record."""

    def one(value: Any) -> bool:
        return (isinstance(value, Mapping) and KEY in value) or (isinstance(value, tuple) and any(map(one, value)))

    return any(map(one, state_dict.values()))


def stored_bytes(value: Any) -> int:
    """Bytes a state_dict entry takes in the file: the dense tensor, or its record's tensors."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        inner = value.get(KEY, value)
        return sum(stored_bytes(v) for v in inner.values() if isinstance(v, torch.Tensor))
    if isinstance(value, tuple):
        return sum(stored_bytes(v) for v in value)
    return 0


def file_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor takes in a checkpoint: packed where that is smaller, else dense."""
    return stored_bytes(pack(tensor) if worth_packing(tensor) else _values_view(tensor))


def _like(original: Mapping[str, Any], entries: dict[str, Any]) -> dict[str, Any]:
    """`entries` as a state_dict that keeps the original's `_metadata`: the module versions that
    `load_state_dict` passes on (a quantized Linear reads its packed weights only when it sees one)."""
    state_dict = OrderedDict(entries)
    metadata = getattr(original, "_metadata", None)
    if metadata is not None:
        state_dict._metadata = metadata  # type: ignore[attr-defined]
    return state_dict


def _values_view(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.int_repr() if tensor.is_quantized else tensor


def _rows_cols(shape: Iterable[int]) -> tuple[int, int]:
    """The 2-D view the bitmask rows follow: the first dimension by the rest (one row for 0-D and 1-D)."""
    shape = list(shape)
    rows = shape[0] if len(shape) >= 2 else 1
    return rows, (math.prod(shape) // rows if rows else 0)


def _quantization(tensor: torch.Tensor) -> dict[str, Any]:
    fields: dict[str, Any] = {"dtype": str(tensor.dtype).removeprefix("torch.")}
    if tensor.qscheme() == torch.per_channel_affine:
        fields.update(
            q_scales=_narrowed(tensor.q_per_channel_scales(), torch.float32),
            q_zero_points=_narrowed(tensor.q_per_channel_zero_points(), torch.int16),
            q_axis=tensor.q_per_channel_axis(),
        )
    else:
        fields.update(q_scale=tensor.q_scale(), q_zero_point=tensor.q_zero_point())
    return fields


def _narrowed(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`values` in a narrower dtype when that holds every value exactly (a per-channel int8 tensor's
    float64 scales and int64 zero points, one pair per output channel, cost more than a bitmask row)."""
    narrow = values.to(dtype)
    return narrow if torch.equal(narrow.to(values.dtype), values) else values


def _requantized(int_repr: torch.Tensor, record: Mapping[str, Any], name: str) -> torch.Tensor:
    """A torch.ao quantized tensor from its integer values and the record's scales (bit-exact)."""
    dtype = _QUANTIZED.get(record["dtype"]) if isinstance(record["dtype"], str) else None
    if dtype is None or int_repr.dtype != torch.tensor([], dtype=dtype).int_repr().dtype:
        raise _damaged(name, f"dtype {record['dtype']!r} does not fit its {int_repr.dtype} values")
    try:
        if "q_axis" in record:  # torch keeps per-channel scales as float64 and zero points as int64
            scales, zero_points = record["q_scales"].double(), record["q_zero_points"].long()
            return torch._make_per_channel_quantized_tensor(int_repr, scales, zero_points, record["q_axis"])
        return torch._make_per_tensor_quantized_tensor(int_repr, record["q_scale"], record["q_zero_point"])
    except (KeyError, TypeError, AttributeError, RuntimeError, IndexError) as exc:
        raise _damaged(name, f"its quantization parameters do not fit ({type(exc).__name__})") from None


def _tensors(values: Iterable[Any]) -> Iterable[torch.Tensor]:
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, tuple):
            yield from _tensors(value)


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def _shared_storages(tensors: Iterable[torch.Tensor]) -> set[int]:
    seen: set[int] = set()
    shared: set[int] = set()
    for tensor in tensors:
        key = _storage(tensor)
        (shared if key in seen else seen).add(key)
    return shared


def _damaged(name: str, why: str) -> UserError:
    return UserError(f"damaged checkpoint (sparse tensor {name!r}: {why})")
