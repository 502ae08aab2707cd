"""The error family: every error imgcls raises on purpose is an ImgclsError, keeps the
built-in type callers already catch, and names the parameters of the Python API."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import imgcls
from imgcls import errors
from imgcls.errors import ConfigError
from imgcls.training.config import TrainConfig


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


def test_each_error_class_is_defined_once_in_imgcls_errors():
    """No room defines or re-exports an error of its own: callers import them from one home."""
    package = Path(imgcls.__file__).parent
    families = {name for name in dir(errors) if isinstance(getattr(errors, name), type)}
    elsewhere = []
    for path in package.rglob("*.py"):
        if path.name == "errors.py" and path.parent == package:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name in families:
                elsewhere.append(f"{path.relative_to(package)} defines {node.name}")
            if isinstance(node, ast.Assign) and any(
                getattr(t, "id", None) == "__all__" for t in node.targets
            ):
                names = {getattr(e, "value", None) for e in getattr(node.value, "elts", [])}
                if path.name != "__init__.py" or path.parent != package:
                    elsewhere += [
                        f"{path.relative_to(package)} exports {n}" for n in names & families
                    ]
    assert not elsewhere, elsewhere
    assert imgcls.ImageError is errors.ImageError and imgcls.ModelError is errors.ModelError


def test_config_errors_name_the_parameter_as_python_spells_it(tmp_path):
    with pytest.raises(ConfigError) as raised:
        TrainConfig(data=str(tmp_path), out=str(tmp_path / "run"), val_split=1.5).check()
    assert str(raised.value) == "`val_split` must be in [0, 1), got 1.5"
    assert raised.value.parameters == ("val_split",)
