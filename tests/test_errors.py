"""The error family: every error imgcls raises on purpose is an ImgclsError, keeps the
built-in type callers already catch, and names the parameters of the Python API."""

from __future__ import annotations

import pytest

import imgcls
from imgcls import errors
from imgcls.train_config import ConfigError, TrainConfig


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_is_an_imgcls_error(name):
    assert issubclass(getattr(errors, name), imgcls.ImgclsError)


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (errors.ImageError, ValueError),
        (errors.ConfigError, ValueError),
        (errors.DataError, ValueError),
        (errors.ModelError, ValueError),
        (errors.WeightsError, ValueError),
        (errors.WriteError, OSError),
        (errors.StartupError, RuntimeError),
    ],
)
def test_errors_stay_the_builtin_types_callers_catch(error, builtin):
    assert issubclass(error, builtin)


def test_the_modules_that_raise_an_error_export_that_very_class():
    from imgcls import checkpoint, data, doctor, evaluate, images, models, serve, train

    assert imgcls.ImageError is images.ImageError is errors.ImageError
    assert imgcls.ModelError is models.ModelError is errors.ModelError
    assert checkpoint.WeightsError is errors.WeightsError
    assert checkpoint.WriteError is errors.WriteError
    assert data.DataError is errors.DataError
    assert doctor.DoctorError is errors.DoctorError
    assert evaluate.EvaluationError is errors.EvaluationError
    assert train.ConfigError is errors.ConfigError and train.TrainConfig is TrainConfig
    assert serve.StartupError is errors.StartupError


def test_config_errors_name_the_parameter_as_python_spells_it(tmp_path):
    with pytest.raises(ConfigError) as raised:
        TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), val_split=1.5).check()
    assert str(raised.value) == "`val_split` must be in [0, 1), got 1.5"
    assert raised.value.parameters == ("val_split",)
