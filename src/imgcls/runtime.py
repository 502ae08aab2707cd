"""Running a model: a batch of preprocessed images in, logits out."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from imgcls.heads import OnnxHead
from imgcls.models import pooled_features

__all__ = ["HeadRuntime", "TorchRuntime"]


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
            features = pooled_features(self.module, x)
        return features.float().cpu().numpy()


class HeadRuntime:
    """A backbone's features through a classical head (logreg, SVM, MLP, k-NN).

    Its "logits" are log-probabilities, so the softmax every caller applies gives the
    head's probabilities back unchanged.
    """

    def __init__(self, backbone: TorchRuntime, head: OnnxHead) -> None:
        self.backbone = backbone
        self.head = head
        self.backend = backbone.backend

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        probabilities = self.head.predict_proba(self.backbone.features(batch))
        return np.log(np.maximum(probabilities, 1e-30)).astype(np.float32)

    def features(self, batch: np.ndarray) -> np.ndarray:
        return self.backbone.features(batch)
