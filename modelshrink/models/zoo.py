"""Small architectures for `model.factory`, e.g. `factory: modelshrink.models.zoo:small_cnn`.

They train in seconds on the bundled digits, which makes them the models of the quick recipes and
the tests; any other factory works the same way.
"""

from __future__ import annotations

from torch import nn


def mlp(in_features: int = 64, hidden: int = 256, num_classes: int = 10, depth: int = 2) -> nn.Module:
    """A plain MLP on flattened inputs (e.g. 1x8x8 digits -> 64 features)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def small_cnn(in_channels: int = 3, num_classes: int = 10, width: int = 32) -> nn.Module:
    """Conv-BN-ReLU blocks with a residual-free head: fast to train, every layer prunable."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(in_channels, width),
        *block(width, width),
        nn.MaxPool2d(2),
        *block(width, 2 * width),
        *block(2 * width, 2 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )
