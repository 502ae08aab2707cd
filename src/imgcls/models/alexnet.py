"""torchvision's AlexNet with timm's head interface, so that the registry (`registry.py`)
reads its features and finds its classifier as it does for any timm model. The parameters
and their names are torchvision's own: its ImageNet weights and existing runs load as
they are."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

__all__ = ["AlexNet"]


class AlexNet(torchvision.models.AlexNet):
    """AlexNet (Krizhevsky et al., 2012) as torchvision builds it, plus `forward_features`,
    `forward_head`, `num_features`, `get_classifier` and `reset_classifier` as in timm."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__(num_classes=num_classes)
        self.num_classes = num_classes
        self.num_features = self.classifier[-1].in_features  # 4096, what the head reads

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.classifier[:-1](torch.flatten(self.avgpool(x), 1))
        return x if pre_logits else self.classifier[-1](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier[-1]

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier[-1] = nn.Linear(self.num_features, num_classes)
