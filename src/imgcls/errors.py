"""The errors imgcls raises on purpose, in one family: `except ImgclsError` catches them all.

Each message names the input, what was wrong with it and what to do. Errors about a
function's arguments name them as the Python API spells them (`epochs`, `calibration`) and
list them in `parameters`, so a caller with other names for them, such as the command line
and its flags, can put its own in their place. The CLI turns these errors into one line on
stderr and an exit code (`imgcls.cli`); the HTTP service into JSON errors (`imgcls.serve`).

Most are also a `ValueError` (a bad input), `WriteError` an `OSError`, `StartupError` a
`RuntimeError`, so code written against the built-in types still catches them.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "DoctorError",
    "EvaluationError",
    "ImageError",
    "ImgclsError",
    "LabelFileError",
    "ModelError",
    "NotExplainable",
    "Overloaded",
    "QuantizationError",
    "RequestError",
    "StartupError",
    "StorageFull",
    "UnknownLabel",
    "UnknownModel",
    "WeightsError",
    "WriteError",
]


class ImgclsError(Exception):
    """Base of every error imgcls raises on purpose. `parameters`: the arguments the
    message names, as the Python API spells them (empty when it names none)."""

    def __init__(self, message: str, *, parameters: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.parameters = parameters


class ConfigError(ImgclsError, ValueError):
    """Arguments out of range or that do not go together (training, export)."""


class DataError(ImgclsError, ValueError):
    """A data set that cannot be read or trained on; the message says which folder and why."""


class LabelFileError(DataError):
    """A label file (CSV or JSON Lines) with rows that cannot be used. `problems` holds
    every (row number, reason); the message names the first few."""

    def __init__(
        self,
        message: str,
        *,
        problems: tuple[tuple[int, str], ...] = (),
        parameters: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message, parameters=parameters)
        self.problems = problems


class DoctorError(ImgclsError, ValueError):
    """A data folder, manifest or CSV the doctor cannot work with; the message says why."""


class EvaluationError(ImgclsError, ValueError):
    """A data set that cannot be evaluated with this model; the message says why."""


class ImageError(ImgclsError, ValueError):
    """An input that is not a decodable, acceptable image. The message names the input."""


class ModelError(ImgclsError, ValueError):
    """A model that cannot be built as asked; the message says what to do instead."""


class NotExplainable(ImgclsError, ValueError):
    """The model has no convolutional feature map to explain (or the class is unknown)."""


class QuantizationError(ImgclsError, ValueError):
    """An int8 model that agrees too little with its fp32 original; it was not written."""


class Overloaded(ImgclsError, RuntimeError):
    """The server's queue has no room for these images now; the client may retry."""


class RequestError(ImgclsError, ValueError):
    """A request the service cannot take as sent (e.g. more images than its queue holds)."""


class StorageFull(ImgclsError, OSError):
    """A store that takes no more: its size cap is reached (corrected images)."""


class StartupError(ImgclsError, RuntimeError):
    """The server could not start (a model did not load, the port is taken, ...)."""


class UnknownLabel(ImgclsError, ValueError):
    """A label that is none of the model's classes (a correction, a Grad-CAM target)."""


class UnknownModel(ImgclsError, LookupError):
    """No served model has that name."""


class WeightsError(ImgclsError, ValueError):
    """A weights file that cannot be used; the message names the file and the reason."""


class WriteError(ImgclsError, OSError):
    """A file that could not be written (disk full, no permission); its previous version,
    if any, is intact."""
