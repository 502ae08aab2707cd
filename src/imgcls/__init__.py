"""imgcls: image classification you can predict with, train, evaluate, serve and export.

The package's rooms follow the flow of docs/architecture.md: `data` (decode, data sets,
transforms) → `models` → `trust` → `inference` (`ImageClassifier`) → the consumers
(`training`, `doctor`, `evaluate`, `export`, ...) → `serve` and `cli` on top.
"""

from imgcls.data.images import load_image
from imgcls.errors import ImageError, ImgclsError, ModelError
from imgcls.inference.classifier import ImageClassifier, Prediction
from imgcls.version import __version__

__all__ = [
    "ImageClassifier",
    "ImageError",
    "ImgclsError",
    "ModelError",
    "Prediction",
    "__version__",
    "load_image",
]
