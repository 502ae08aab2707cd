"""The import graph is the flow: the layers contract in pyproject.toml holds for the
package, and breaks as soon as a lower room imports a higher one."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter not installed")


def _lint(tree: Path) -> subprocess.CompletedProcess:
    """lint-imports on the package under `tree`/src with the project's own contract."""
    env = {"PYTHONPATH": str(tree / "src"), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "src" / "imgcls", tree / "src" / "imgcls",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_package_keeps_its_layers(tmp_path):
    run = _lint(_copy(tmp_path))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "BROKEN" not in run.stdout


@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("inference/runtime.py", "from imgcls.serve import app  # noqa"),
        ("data/images.py", "def _late():\n    from imgcls.inference import classifier  # noqa"),
    ],
    ids=["inference-imports-serve", "data-imports-inference-in-a-function"],
)
def test_an_import_against_the_flow_breaks_the_contract(tmp_path, module, line):
    tree = _copy(tmp_path)
    path = tree / "src" / "imgcls" / module
    path.write_text(path.read_text() + "\n\n" + line + "\n")
    run = _lint(tree)
    assert run.returncode != 0
    assert "BROKEN" in run.stdout
