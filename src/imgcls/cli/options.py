"""Options more than one command takes: the choices typer lists in --help (and refuses
others of), and how a label file is read."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated

import typer

from imgcls.data.augment import AUGMENT_PRESETS
from imgcls.export import EXPORT_FORMATS
from imgcls.inference.classifier import BACKENDS, PRECISIONS
from imgcls.training.config import CLASSIFIERS, OPTIMIZERS
from imgcls.trust.calibration import REJECT_SCORES
from imgcls.trust.conformal import CONFORMAL_SCORES

__all__ = [
    "Augment",
    "Backend",
    "BackendOption",
    "Classifier",
    "ConformalScore",
    "ExportFormat",
    "LabelDelim",
    "Optimizer",
    "Precision",
    "PrecisionOption",
    "RejectScore",
    "SkipMissing",
]


def _choices(name: str, values: Sequence[str]) -> type[StrEnum]:
    return StrEnum(name, [(value, value) for value in values])


Backend = _choices("Backend", BACKENDS)
Precision = _choices("Precision", PRECISIONS)
ExportFormat = _choices("ExportFormat", EXPORT_FORMATS)
Optimizer = _choices("Optimizer", OPTIMIZERS)
Augment = _choices("Augment", AUGMENT_PRESETS)
Classifier = _choices("Classifier", CLASSIFIERS)
RejectScore = _choices("RejectScore", REJECT_SCORES)
ConformalScore = _choices("ConformalScore", CONFORMAL_SCORES)

# Reading a label file, the same options wherever DATA may be one.
LabelDelim = Annotated[
    str | None,
    typer.Option(help="Label file: what separates several labels in a cell (default: spaces)."),
]
SkipMissing = Annotated[
    bool, typer.Option(help="Label file: skip (and count) rows whose image file is missing.")
]
BackendOption = Annotated[
    Backend,
    typer.Option(
        help="auto: on the CPU OpenVINO where it is installed and the CPU has bf16, else ONNX "
        "Runtime; PyTorch elsewhere."
    ),
]
PrecisionOption = Annotated[
    Precision,
    typer.Option(
        help="auto: bf16 on OpenVINO where the CPU has it and bf16 agrees with fp32 on the "
        "gate images, else fp32; int8: an `imgcls export --int8` file."
    ),
]
