"""The textbook CNN of `imgcls train --model simple_cnn`, for small images."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SimpleCNN"]


class SimpleCNN(nn.Module):
    """The textbook CNN: conv → BN → ReLU → max-pool blocks, then fully connected
    layers with dropout. An adaptive pool before the classifier makes it work at any input
    size; it is meant for small images (28–64 px). Outputs logits (softmax is applied by
    the loss in training and by the classifier at inference)."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for width in widths:
            layers += [
                nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            in_channels = width
        layers.append(nn.AdaptiveAvgPool2d(4))
        self.features = nn.Sequential(*layers)
        self.num_features = in_channels * 4 * 4
        self.pre_logits = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(self.num_features, 256), nn.ReLU(True)
        )
        self.num_classes = num_classes
        self.fc = nn.Sequential(nn.Dropout(0.3), nn.Linear(256, num_classes))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pre_logits(self.features(x)))
