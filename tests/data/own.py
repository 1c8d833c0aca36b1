"""A user's own code as recipes name it in these tests ('tests.data.own:...'): multi-input models,
Dataset factories, metrics and losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

CALIBRATION_READS: list[int] = []  # indices the calibration split was read at


class TokensAndMask(nn.Module):
    """Keyword inputs, as Hugging Face models take them: mean of masked token embeddings -> classes."""

    def __init__(self, vocab: int = 50, width: int = 32, num_classes: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.hidden = nn.Linear(width, width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        weights = attention_mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.head(F.relu(self.hidden(pooled)))


class ImageAndVector(nn.Module):
    """Positional inputs: an image and a side vector, joined before the head."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.side = nn.Linear(4, 8)
        self.head = nn.Linear(16, num_classes)

    def forward(self, image: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.conv(image).mean((2, 3)), F.relu(self.side(vector))], dim=1))


class Regressor(nn.Module):
    """Float targets: two numbers per input."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def tokens_and_mask() -> nn.Module:
    return TokensAndMask()


def image_and_vector() -> nn.Module:
    return ImageAndVector()


def regressor() -> nn.Module:
    return Regressor()


class Items(Dataset):
    def __init__(self, items: list, record: list[int] | None = None):
        self.items, self.record = items, record

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        if self.record is not None:
            self.record.append(index)
        return self.items[index]


def _token_items(count: int, seed: int, labeled: bool) -> list:
    generator = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(count):
        label = int(torch.randint(0, 4, (1,), generator=generator))
        ids = torch.randint(label * 10, label * 10 + 10, (12,), generator=generator)  # learnable: ids say the class
        mask = torch.ones(12, dtype=torch.long)
        mask[int(torch.randint(4, 12, (1,), generator=generator)) :] = 0
        inputs = {"input_ids": ids, "attention_mask": mask}
        items.append((inputs, label) if labeled else inputs)
    return items


def token_data(labeled: bool = True, calibration: bool = False, count: int = 96):
    """Dict inputs; (train, val), or a dict with a calibration split that records its reads."""
    train, val = Items(_token_items(count, 1, labeled)), Items(_token_items(count // 2, 2, labeled))
    if not calibration:
        return train, val
    CALIBRATION_READS.clear()
    return {"train": train, "val": val, "calibration": Items(_token_items(16, 3, labeled), CALIBRATION_READS)}


def image_vector_data(labeled: bool = False):
    """Tuple inputs (image, vector)."""
    generator = torch.Generator().manual_seed(0)

    def items(count: int) -> list:
        out = []
        for i in range(count):
            pair = (torch.randn(3, 8, 8, generator=generator), torch.randn(4, generator=generator))
            out.append((pair, i % 3) if labeled else pair)
        return out

    return Items(items(48)), Items(items(24))


def regression_data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(160, 6, generator=generator)
    y = torch.stack([x[:, :3].sum(1), x[:, 3:].prod(1)], dim=1)
    return Items(list(zip(x[:120], y[:120], strict=True))), Items(list(zip(x[120:], y[120:], strict=True)))


def not_datasets():
    return [1, 2, 3]


def broken_factory():
    raise RuntimeError("cannot open /data/train")


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(outputs, targets)


def regression_metrics(model: nn.Module, loader: DataLoader) -> dict[str, float]:
    errors = torch.cat([(model(x) - y).abs() for x, y in loader])
    return {"mae": errors.mean().item(), "within_half": (errors < 0.5).float().mean().item()}


def first_logit(model: nn.Module, loader: DataLoader) -> dict[str, float]:
    """Works with any input form: a loader item is what the data yields."""
    inputs, _ = next(iter(loader))
    out = model(**inputs) if isinstance(inputs, dict) else model(*inputs) if isinstance(inputs, list) else model(inputs)
    return {"first_logit": float(out[0, 0]), "undefined": None}


def not_a_dict(model: nn.Module, loader: DataLoader) -> list:
    return [0.5]


def raises(model: nn.Module, loader: DataLoader) -> dict[str, float]:
    raise KeyError("boxes")


def count_samples(model: nn.Module, loader: DataLoader) -> dict[str, float]:
    return {"samples": float(sum(len(targets) for _, targets in loader))}


def slow_metric(model: nn.Module, loader: DataLoader) -> dict[str, float]:
    """Takes a second: a tune trial long enough for several workers to overlap (tests/test_tune_study.py)."""
    import time

    time.sleep(1.0)
    return {"slow": 1.0}
