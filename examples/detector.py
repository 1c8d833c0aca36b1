"""A MobileNet-style detector with three heads, the shape of a face detector (issue #25): a depthwise
torchvision MobileNetV2 backbone, then boxes, scores and landmarks, each at its own scale.

On the boxes data (`examples.boxes`: real photos, one rectangle pasted in), the heads predict the
rectangle's box in [0, 1], four class scores (the quadrant its centre lies in, logits) and its four
corner points in pixels (values up to the image size): three outputs a hundred times apart in scale,
as a detector's are. `bench_static_int8.py` trains it and quantizes it; tests build it small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from examples.boxes import fit, images_with_boxes

IMAGE_SIZE = 64


class Detector(nn.Module):
    def __init__(self, width: float = 0.5, image_size: int = IMAGE_SIZE):
        super().__init__()
        from torchvision.models import mobilenet_v2

        self.image_size = image_size
        self.features = mobilenet_v2(width_mult=width).features  # depthwise separable, ReLU6, residuals
        channels = self.features[-1].out_channels
        self.boxes, self.scores, self.landmarks = nn.Linear(channels, 4), nn.Linear(channels, 4), nn.Linear(channels, 8)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = F.adaptive_avg_pool2d(self.features(images), 1).flatten(1)
        return {
            "boxes": self.boxes(pooled).sigmoid(),
            "scores": self.scores(pooled),
            "landmarks": self.landmarks(pooled) * self.image_size,
        }


def model(width: float = 0.5, image_size: int = IMAGE_SIZE, checkpoint: str | None = None) -> nn.Module:
    net = Detector(width, image_size)
    if checkpoint:
        net.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return net


def data(train: int = 512, val: int = 256, image_size: int = IMAGE_SIZE) -> dict[str, TensorDataset]:
    """The `data.kind: python` factory: train, val and a calibration set, disjoint by seed."""
    return {
        "train": images_with_boxes(train, image_size, seed=1),
        "val": images_with_boxes(val, image_size, seed=2),
        "calibration": images_with_boxes(64, image_size, seed=3),
    }


def targets(boxes: torch.Tensor, image_size: int) -> dict[str, torch.Tensor]:
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    quadrant = (centre[:, 0] > 0.5).long() + 2 * (centre[:, 1] > 0.5).long()
    x0, y0, x1, y1 = boxes.unbind(1)
    corners = torch.stack([x0, y0, x1, y0, x1, y1, x0, y1], dim=1) * image_size
    return {"quadrant": quadrant, "corners": corners}


def detector_loss(outputs: dict[str, torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
    """Each head against its own target, each term of a similar size."""
    wanted = targets(boxes, IMAGE_SIZE)
    return (
        F.smooth_l1_loss(outputs["boxes"], boxes, beta=0.05) * 10
        + F.cross_entropy(outputs["scores"], wanted["quadrant"])
        + F.smooth_l1_loss(outputs["landmarks"] / IMAGE_SIZE, wanted["corners"] / IMAGE_SIZE, beta=0.05) * 10
    )


def train_baseline(path: str, epochs: int = 40, seed: int = 0) -> None:
    """Train the detector the bench quantizes (each head against its own target, `detector_loss`)."""
    torch.manual_seed(seed)
    torch.save(fit(model(), data()["train"], detector_loss, epochs).state_dict(), path)
