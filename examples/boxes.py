"""A detection-style task as a user would bring it: a small CNN with a box head, its data, its metric
and its loss, all named from `recipes/boxes_channel_distill.yaml`.

Each image is a real photo (scikit-learn's bundled samples, random crops) with one bright rectangle
pasted in; the target is that rectangle's box (x0, y0, x1, y1, in [0, 1]). The model outputs a dict
`{"boxes": (N, 4), "scores": (N, 1)}`, so nothing here is a classifier: quality is the user's own
metric (mean IoU, and the share of boxes found with IoU >= 0.5), and training uses the user's loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def conv_bn_relu(channels: int, out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(channels, out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]


class BoxNet(nn.Module):
    """Conv-BN-ReLU stages, global pooling, then a box head and a score head."""

    def __init__(self, width: int = 16, image_size: int = 32):
        super().__init__()
        self.image_size = image_size
        layers, channels = [], 3
        for out in (width, width * 2, width * 4):
            layers += [*conv_bn_relu(channels, out, stride=1), *conv_bn_relu(out, out, stride=2)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.boxes = nn.Linear(channels * 16, 4)
        self.scores = nn.Linear(channels * 16, 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.shape[-2:] != (self.image_size, self.image_size):  # shape checks, as real models have
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got {tuple(images.shape[-2:])}")
        pooled = F.adaptive_avg_pool2d(self.features(images), 4).flatten(1)
        return {"boxes": self.boxes(pooled).sigmoid(), "scores": self.scores(pooled)}


def model(width: int = 16, image_size: int = 32, checkpoint: str | None = None) -> nn.Module:
    net = BoxNet(width, image_size)
    if checkpoint:
        net.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return net


def images_with_boxes(count: int, image_size: int = 32, seed: int = 0) -> TensorDataset:
    """Crops of scikit-learn's sample photos, each with one rectangle pasted in at a random place."""
    from sklearn.datasets import load_sample_images

    generator = torch.Generator().manual_seed(seed)
    photos = [torch.tensor(p).permute(2, 0, 1).float() / 255 for p in load_sample_images().images]
    images, boxes = torch.empty(count, 3, image_size, image_size), torch.empty(count, 4)
    for i in range(count):
        photo = photos[i % len(photos)]
        top = int(torch.randint(0, photo.shape[1] - 4 * image_size, (1,), generator=generator))
        left = int(torch.randint(0, photo.shape[2] - 4 * image_size, (1,), generator=generator))
        crop = photo[:, top : top + 4 * image_size : 4, left : left + 4 * image_size : 4].clone()
        w, h = (int(v) for v in torch.randint(image_size // 4, image_size // 2, (2,), generator=generator))
        x0 = int(torch.randint(0, image_size - w, (1,), generator=generator))
        y0 = int(torch.randint(0, image_size - h, (1,), generator=generator))
        crop[:, y0 : y0 + h, x0 : x0 + w] = torch.tensor([1.0, 0.9, 0.1]).view(3, 1, 1)
        images[i] = (crop - 0.5) / 0.25
        boxes[i] = torch.tensor([x0, y0, x0 + w, y0 + h]) / image_size
    return TensorDataset(images, boxes)


def data(train: int = 384, val: int = 128, image_size: int = 32) -> dict[str, TensorDataset]:
    """The `data.kind: python` factory: train, val and a calibration set, disjoint by seed."""
    return {
        "train": images_with_boxes(train, image_size, seed=1),
        "val": images_with_boxes(val, image_size, seed=2),
        "calibration": images_with_boxes(64, image_size, seed=3),
    }


def box_loss(outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """The `loss:` of training stages: smooth L1 between predicted and true boxes."""
    return F.smooth_l1_loss(outputs["boxes"], targets, beta=0.05)


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection over union of matching rows of two (N, 4) box tensors."""
    lo, hi = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (hi - lo).clamp(min=0).prod(dim=1)
    area = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1) + (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    return inter / (area - inter).clamp(min=1e-9)


def box_metrics(model: nn.Module, loader: DataLoader) -> dict[str, float]:
    """The `evaluate.metrics` function: mean IoU, and map50 (here: boxes found with IoU >= 0.5)."""
    overlaps = torch.cat([iou(model(images)["boxes"], boxes) for images, boxes in loader])
    return {"mean_iou": overlaps.mean().item(), "map50": (overlaps >= 0.5).float().mean().item()}


def train_baseline(path: str, epochs: int = 30, seed: int = 0) -> None:
    """Train the model the recipe compresses (a user brings theirs; the test and demo make this one)."""
    torch.manual_seed(seed)
    net = fit(model(), data()["train"], box_loss, epochs)
    torch.save(net.state_dict(), path)


def fit(net: nn.Module, dataset: TensorDataset, loss: Callable[..., torch.Tensor], epochs: int) -> nn.Module:
    """A plain training loop (AdamW, cosine schedule), as a user would have trained their model."""
    loader = DataLoader(dataset, batch_size=32, shuffle=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(loader))
    net.train()
    for _ in range(epochs):
        for inputs, targets in loader:
            optimizer.zero_grad()
            loss(net(inputs), targets).backward()
            optimizer.step()
            schedule.step()
    return net.eval()
