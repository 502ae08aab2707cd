"""The MLflow pyfunc of an imgcls run: `mlflow.pyfunc.load_model(uri).predict(frame)`
classifies the encoded images of `frame["image"]` (the bytes of JPEG, PNG... files), and
`mlflow models serve` answers the same over HTTP (base64 in JSON).

It wraps `ImageClassifier` over the run directory logged beside it, so an MLflow user gets
what every imgcls path gives: the run's preprocessing, class names, temperature and
"unknown" rule (docs/train.md says why this rather than the ONNX flavour). MLflow logs this
file as "models from code" (`tracking.log_model`): loading the model runs it, no pickle.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class RunDirectoryModel(PythonModel):
    """A pyfunc over the run directory of the artifact "run"."""

    def load_context(self, context) -> None:
        from imgcls.inference.classifier import ImageClassifier

        self.classifier = ImageClassifier(context.artifacts["run"])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None):
        """One row per image: the top label, its class id, output index, score and whether
        the model calls the image unknown."""
        images = [bytes(image) for image in model_input["image"]]
        min_score = (params or {}).get("min_score")
        ranked = self.classifier.classify_images(images, top_k=1, min_score=min_score)
        return pd.DataFrame(
            [
                {"label": top.label, "class_id": top.class_id, "index": top.index,
                 "score": top.score, "unknown": top.unknown}
                for top in (predictions[0] for predictions in ranked)
            ]
        )  # fmt: skip


mlflow.models.set_model(RunDirectoryModel())
