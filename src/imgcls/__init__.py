"""imgcls: image classification you can predict with, train, evaluate, serve and export."""

from imgcls.classifier import ImageClassifier, Prediction
from imgcls.errors import ImgclsError
from imgcls.images import ImageError, load_image
from imgcls.models import ModelError

__all__ = ["ImageClassifier", "ImageError", "ImgclsError", "ModelError", "Prediction", "load_image"]
__version__ = "0.1.0"
