"""Data sources on real (digits) and small hand-made files (ImageFolder, CIFAR-10 in both formats)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from modelshrink.data import build_data
from modelshrink.errors import UserError
from modelshrink.recipe.schema import Cifar10Data, DigitsData, ImageFolderData


def test_digits_resized_to_rgb_with_a_stratified_seeded_split() -> None:
    bundle = build_data(DigitsData(kind="digits", image_size=16, channels=3, batch_size=50), seed=1)
    x, _ = next(iter(bundle.val))
    assert x.shape == (50, 3, 16, 16) and bundle.input_shape == (3, 16, 16) and bundle.num_classes == 10
    assert len(bundle.train.dataset) + len(bundle.val.dataset) == 1797
    val_labels = torch.cat([labels for _, labels in bundle.val])
    assert torch.bincount(val_labels).min() >= 30  # every class present in proportion
    again = build_data(DigitsData(kind="digits", image_size=16, channels=3, batch_size=50), seed=1)
    assert torch.equal(next(iter(again.val))[0], x)
    gray = build_data(DigitsData(kind="digits", image_size=8, channels=1), seed=1)
    assert next(iter(gray.val))[0].shape[1:] == (1, 8, 8)


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 12, 3), value, dtype=np.uint8)).save(path)


def test_imagefolder_with_train_val_and_single_folder(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for cls, value in (("cat", 10), ("dog", 240)):
            for i in range(3):
                _png(tmp_path / "tv" / split / cls / f"{i}.png", value)
    bundle = build_data(ImageFolderData(kind="imagefolder", path=tmp_path / "tv", image_size=8, channels=1), 0)
    x, y = next(iter(bundle.val))
    assert x.shape == (6, 1, 8, 8) and bundle.class_names == ["cat", "dog"]
    assert x[y == 0].mean() < x[y == 1].mean()

    for cls, value in (("a", 0), ("b", 100), ("c", 200)):
        for i in range(5):
            _png(tmp_path / "one" / cls / f"{i}.png", value)
    single = build_data(ImageFolderData(kind="imagefolder", path=tmp_path / "one", image_size=8, val_fraction=0.2), 0)
    assert len(single.val.dataset) == 3 and len(single.train.dataset) == 12 and single.num_classes == 3
    with pytest.raises(ValidationError, match="missing does not exist"):
        ImageFolderData(kind="imagefolder", path=tmp_path / "missing")


def _cifar_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n)


def test_cifar10_binary_and_python_formats_read_the_same(tmp_path: Path) -> None:
    train, test = _cifar_arrays(20, 0), _cifar_arrays(8, 1)
    binary = tmp_path / "bin" / "cifar-10-batches-bin"
    binary.mkdir(parents=True)
    for name, (data, labels) in (("data_batch_1.bin", train), ("test_batch.bin", test)):
        np.concatenate([labels[:, None].astype(np.uint8), data], axis=1).tofile(binary / name)
    python = tmp_path / "py" / "cifar-10-batches-py"
    python.mkdir(parents=True)
    for name, (data, labels) in (("data_batch_1", train), ("test_batch", test)):
        with open(python / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels.tolist()}, fh)
    a = build_data(Cifar10Data(kind="cifar10", path=tmp_path / "bin", batch_size=8), 0)
    b = build_data(Cifar10Data(kind="cifar10", path=tmp_path / "py", batch_size=8), 0)
    (xa, ya), (xb, yb) = next(iter(a.val)), next(iter(b.val))
    assert xa.shape == (8, 3, 32, 32) and torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.equal(ya, torch.tensor(test[1]))
    assert len(a.train.dataset) == 20 and a.class_names[0] == "airplane"


def test_cifar10_python_batches_cannot_run_code(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    evil = pickle.dumps({b"data": __import__("os").system, b"labels": []})
    for name in ("data_batch_1", "test_batch"):
        (folder / name).write_bytes(evil)
    with pytest.raises(UserError, match="refusing to unpickle"):
        build_data(Cifar10Data(kind="cifar10", path=tmp_path), 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no CIFAR-10 batches"):
        build_data(Cifar10Data(kind="cifar10", path=tmp_path / "empty"), 0)


def test_the_bundled_held_out_texts_are_several_hundred_and_unlike_the_calibration_ones() -> None:
    from modelshrink.data.text import read_texts
    from modelshrink.recipe.schema import TextData

    held_out, labels, _ = read_texts(TextData(kind="text", sample="held_out"))
    calibration, _, _ = read_texts(TextData(kind="text"))
    assert len(held_out) >= 300 and labels is None
    assert len(set(held_out)) == len(held_out) and not set(held_out) & set(calibration)
    questions = sum(text.rstrip().endswith("?") for text in held_out)
    passages = sum(len(text.split()) > 30 for text in held_out)
    queries = sum(len(text.split()) <= 6 and text.islower() for text in held_out)
    assert questions >= 30 and passages >= 15 and queries >= 30, "questions, long passages, short queries"
    with pytest.raises(ValidationError, match="not both"):
        TextData(kind="text", sample="held_out", path=Path(__file__))
