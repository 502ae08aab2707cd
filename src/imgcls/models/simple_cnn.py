"""The textbook CNN of `imgcls train --model simple_cnn`, for small images."""

from __future__ import annotations

import warnings

import torch
from torch import nn

__all__ = ["AdaptiveAvgPool2d", "SimpleCNN"]


class SimpleCNN(nn.Module):
    """The textbook CNN: conv → BN → ReLU → max-pool blocks, then fully connected
    layers with dropout. An adaptive pool before the classifier makes it work at any input
    size; it is meant for small images (28–64 px). Outputs logits (softmax is applied by
    the loss in training and by the classifier at inference).

    Its interface is timm's (`forward_features`, `forward_head`, `num_features`,
    `get_classifier`, `reset_classifier`), so the registry treats it as any timm model."""

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
        layers.append(AdaptiveAvgPool2d(4))
        self.features = nn.Sequential(*layers)
        self.num_features = 256  # the classifier's input: the pooled penultimate features
        self.pre_logits = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(in_channels * 4 * 4, self.num_features),
            nn.ReLU(True),
        )
        self.num_classes = num_classes
        self.fc = _classifier(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = _classifier(self.num_features, num_classes)


def _classifier(num_features: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(0.3), nn.Linear(num_features, num_classes))


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """`nn.AdaptiveAvgPool2d` that also exports to ONNX when the output size does not
    divide the input (28 px images reach this pool as 3x3 maps, pooled to 4x4).

    The TorchScript ONNX exporter writes adaptive pooling only for sizes that divide. An
    export's spatial size is fixed, so there the bins PyTorch pools over are constants:
    each output cell is written as the mean of its slice. Outside an export, and where the
    size divides, it is PyTorch's own operator."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return super().forward(x)
        with warnings.catch_warnings():  # constants on purpose: an export has one size
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            height, width = int(x.shape[-2]), int(x.shape[-1])
        out_height, out_width = _pair(self.output_size, (height, width))
        if height % out_height == 0 and width % out_width == 0:
            return super().forward(x)  # written as an AveragePool
        rows = [
            torch.cat(
                [x[..., top:bottom, left:right].mean((-2, -1), keepdim=True)
                 for left, right in _bins(width, out_width)],
                dim=-1,
            )
            for top, bottom in _bins(height, out_height)
        ]  # fmt: skip
        return torch.cat(rows, dim=-2)


def _pair(size, input_size: tuple[int, int]) -> tuple[int, int]:
    """`output_size` as (height, width); None keeps the input's size, as in PyTorch."""
    sizes = (size, size) if isinstance(size, int) else tuple(size)
    return tuple(s if s is not None else i for s, i in zip(sizes, input_size, strict=True))


def _bins(length: int, bins: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling windows: [floor(i*L/n), ceil((i+1)*L/n)) for each i."""
    return [(i * length // bins, -(-(i + 1) * length // bins)) for i in range(bins)]
