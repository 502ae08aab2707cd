"""Running a model: a batch of preprocessed images in, logits out."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["TorchRuntime"]


class TorchRuntime:
    """Eager PyTorch inference on a device ("cpu", "cuda", "cuda:1", ...)."""

    backend = "torch"

    def __init__(self, module: nn.Module, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.module = module.eval().to(self.device)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 → (N, num_classes) float32 logits."""
        with torch.inference_mode():
            logits = self.module(torch.from_numpy(batch).to(self.device))
        return logits.float().cpu().numpy()

    def features(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 → (N, D) pooled penultimate features, the classifier's input."""
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)
            if hasattr(self.module, "forward_head"):  # every timm model
                features = self.module.forward_head(
                    self.module.forward_features(x), pre_logits=True
                )
            else:  # torchvision's AlexNet: everything but the last linear layer
                features = self.module.classifier[:-1](
                    torch.flatten(self.module.avgpool(self.module.features(x)), 1)
                )
        return features.float().cpu().numpy()
