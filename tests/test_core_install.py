"""The inference-only install (`pip install imgcls`): predicting and serving an exported
.onnx file works without PyTorch, timm or scikit-learn, with nothing but the core
dependencies of pyproject.toml; a command that needs more says which install has it.

"Not installed" is played by an import hook in a fresh interpreter: importing a blocked
package fails as it would without it, and each attempt is reported on stderr.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from importlib import metadata

import httpx
import pytest
from helpers import ESPRESSO_ID, REPO, SAMPLES, cli_env
from packaging.requirements import Requirement
from serve_utils import ESPRESSO, process_server

# Run the CLI with argv[1] (comma-separated top-level packages) uninstallable.
WITHOUT = textwrap.dedent(
    """
    import sys

    blocked = set(sys.argv[1].split(","))

    class Uninstalled:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in blocked:
                print(f"blocked import: {name}", file=sys.stderr, flush=True)
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Uninstalled())
    sys.argv = ["imgcls", *sys.argv[2:]]
    from imgcls.cli import main

    main()
    """
)
TRAIN_ONLY = {"torch", "torchvision", "timm", "sklearn"}
HEAVY = TRAIN_ONLY | {"scipy", "matplotlib", "albumentations", "onnx", "pytorch_grad_cam"}
# In every virtual environment, whatever the project asks for.
INTERPRETER = {"pip", "setuptools", "pkg_resources", "_distutils_hack"}


def _name(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _core_distributions() -> set[str]:
    """pyproject.toml's core dependencies and everything they depend on, as installed."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    found: set[str] = set()
    while wanted:
        requirement = wanted.pop()
        name = _name(requirement.name)
        # A marker naming an extra ("extra == 'socks'") is false: no extras are asked for.
        if name in found or (requirement.marker and not requirement.marker.evaluate()):
            continue
        found.add(name)
        wanted.extend(Requirement(r) for r in metadata.requires(requirement.name) or [])
    return found


def _outside_core() -> set[str]:
    """Top-level packages installed here that no core dependency provides."""
    core = _core_distributions()
    return {
        package
        for package, distributions in metadata.packages_distributions().items()
        if not any(_name(d) in core for d in distributions)
        and package not in INTERPRETER | {"imgcls"}
        and not package.startswith("__editable__")
    }


BLOCKS = {"no-torch-timm-sklearn": TRAIN_ONLY, "core-dependencies-only": _outside_core()}


def _launcher(blocked: set[str]) -> tuple[str, ...]:
    return ("-c", WITHOUT, ",".join(sorted(blocked)))


def _imgcls(blocked: set[str], *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *_launcher(blocked), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**cli_env(), **env},
    )


@pytest.fixture(scope="module")
def onnx_file(classifier, tmp_path_factory):
    """The default model's export, as the session's export cache holds it."""
    assert classifier.runtime.backend == "onnx"
    path = tmp_path_factory.mktemp("core") / "lite0.onnx"
    shutil.copy(classifier.runtime.path, path)
    return path


def test_the_core_dependencies_leave_out_pytorch_and_the_training_stack() -> None:
    assert HEAVY.issubset(BLOCKS["core-dependencies-only"])


@pytest.mark.parametrize("blocked", BLOCKS.values(), ids=BLOCKS.keys())
def test_predict_an_onnx_file_without_the_training_stack(onnx_file, blocked) -> None:
    args = ("predict", str(SAMPLES / "espresso.jpg"), "--model", str(onnx_file), "--json")
    result = _imgcls(blocked, *args)
    assert result.returncode == 0, result.stderr
    assert "blocked import: torch" not in result.stderr
    [record] = json.loads(result.stdout)
    assert record["predictions"][0]["class_id"] == ESPRESSO_ID


@pytest.mark.parametrize("blocked", BLOCKS.values(), ids=BLOCKS.keys())
def test_serve_an_onnx_file_without_the_training_stack(onnx_file, blocked, tmp_path) -> None:
    server_log = tmp_path / "server.log"
    launcher = _launcher(blocked)
    with process_server("--model", str(onnx_file), launcher=launcher, log=server_log) as (
        process,
        url,
    ):
        classified = httpx.post(f"{url}/v1/classify", files={"file": ("e.jpg", ESPRESSO)})
        page = httpx.get(url)  # the page warms Grad-CAM, which an ONNX file does not have
        explained = httpx.post(f"{url}/v1/explain", files={"file": ("e.jpg", ESPRESSO)})
        process.terminate()
        assert process.wait(timeout=60) == 0
    output = server_log.read_text()
    assert classified.status_code == 200, classified.text
    top = classified.json()["results"][0]["predictions"][0]
    assert (top["label"], top["class_id"]) == ("espresso", ESPRESSO_ID)
    assert page.status_code == 200
    assert explained.status_code == 422 and "ONNX file" in explained.json()["error"]["message"]
    assert "blocked import: torch" not in output and "Traceback" not in output


@pytest.mark.parametrize(
    "args",
    [
        ("predict", str(SAMPLES / "espresso.jpg"), "--model", "efficientnet_lite0"),
        ("export", "efficientnet_lite0", "--out", "{tmp}/never.onnx"),
        ("train", str(SAMPLES), "--out", "{tmp}/never"),
    ],
    ids=["predict-a-model-name", "export", "train"],
)
def test_a_command_that_needs_pytorch_says_which_install_has_it(args, tmp_path) -> None:
    args = [arg.format(tmp=tmp_path) for arg in args]
    result = _imgcls(TRAIN_ONLY, *args, IMGCLS_CACHE_DIR=str(tmp_path / "empty-cache"))
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "blocked import" not in line]
    assert len(errors) == 1 and "pip install 'imgcls[train]'" in errors[0], result.stderr
