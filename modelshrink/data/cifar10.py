"""CIFAR-10 from a local folder, in either official format: binary (`cifar-10-batches-bin`) or python.

torchvision's CIFAR10 class insists on the official md5 sums and unpickles the python batches with
plain `pickle`. We read the binary format directly (no pickle at all), and the python format through
an unpickler that only admits numpy arrays: no library offers that restriction, hence this module.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from modelshrink.data.bundle import IMAGENET_MEAN, IMAGENET_STD, DataBundle, image_bundle, normalization
from modelshrink.data.tensors import ImageTensorDataset
from modelshrink.errors import UserError
from modelshrink.recipe.schema import Cifar10Data, ModelSpec
from modelshrink.registry import register

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
_RECORD = 1 + 3 * 32 * 32


@register(Cifar10Data)
def build(spec: Cifar10Data, seed: int, model: ModelSpec | None = None) -> DataBundle:
    train_x, train_y, val_x, val_y = read_folder(spec.path)
    default = (IMAGENET_MEAN, IMAGENET_STD) if spec.channels == 3 else ((0.5,), (0.5,))
    mean, std = normalization(spec.mean, spec.std, spec.channels, default=default)

    def dataset(x: np.ndarray, y: np.ndarray) -> ImageTensorDataset:
        images = torch.from_numpy(x).float().div_(255.0)
        return ImageTensorDataset(images, torch.from_numpy(y).long(), spec.image_size, spec.channels, mean, std)

    return image_bundle(
        spec, seed, dataset(train_x, train_y), dataset(val_x, val_y), num_classes=10, class_names=CLASSES
    )


def read_folder(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels); images as uint8 (N, 3, 32, 32)."""
    for folder in (path / "cifar-10-batches-bin", path):
        train = sorted(folder.glob("data_batch_*.bin"))
        if train and (folder / "test_batch.bin").is_file():
            return (*_concat([_read_bin(f) for f in train]), *_read_bin(folder / "test_batch.bin"))
    for folder in (path / "cifar-10-batches-py", path):
        train = sorted(f for f in folder.glob("data_batch_*") if f.suffix == "")
        if train and (folder / "test_batch").is_file():
            return (*_concat([_read_py(f) for f in train]), *_read_py(folder / "test_batch"))
    raise UserError(f"data.path: no CIFAR-10 batches (data_batch_*, test_batch) found under {path}")


def _read_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _RECORD:
        raise UserError(f"data.path: {path} is not a CIFAR-10 binary batch ({raw.size} bytes)")
    records = raw.reshape(-1, _RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def _read_py(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as fh:
            batch = _NumpyOnlyUnpickler(fh, encoding="bytes").load()
        data, labels = batch[b"data"], batch[b"labels"]
    except (pickle.UnpicklingError, KeyError, TypeError, EOFError) as exc:
        raise UserError(f"data.path: {path} is not a CIFAR-10 python batch ({exc})") from None
    return np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
