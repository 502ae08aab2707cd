"""A model repository on disk, in Triton's and TorchServe's layout:

    DIR/<name>/<version>/        a run directory, or a folder holding one .onnx file
    DIR/<name>/policy.json       optional: {"version": N} pins the live version

Versions are positive integers; the newest is live unless the policy (or the repository
API, which writes nothing) pins one. Scanning only reads the folders; loading and the
swap are the Service's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from imgcls.models.run_dir import is_run_dir

__all__ = ["RepositoryModel", "scan_repository"]

log = logging.getLogger("imgcls.serve")

POLICY_FILE = "policy.json"


@dataclass(frozen=True)
class RepositoryModel:
    """One model's folder: its versions (number → what to load) and a pinned version."""

    name: str
    versions: dict[int, Path] = field(default_factory=dict)
    pinned: int | None = None
    problems: tuple[str, ...] = ()  # what was skipped, and why (said in the log and index)

    @property
    def live(self) -> int | None:
        """The version to serve: the pinned one when it exists, else the newest."""
        if self.pinned is not None:
            return self.pinned if self.pinned in self.versions else None
        return max(self.versions, default=None)


def scan_repository(root: Path) -> dict[str, RepositoryModel]:
    """Every model folder under `root`, by name, in name order."""
    if not root.is_dir():
        raise FileNotFoundError(f"--model-repository {root}: no such directory")
    return {
        entry.name: _scan_model(entry)
        for entry in sorted(root.iterdir())
        if entry.is_dir() and not entry.name.startswith(".")
    }


def _scan_model(folder: Path) -> RepositoryModel:
    versions: dict[int, Path] = {}
    problems: list[str] = []
    for entry in sorted(folder.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        if not (entry.name.isascii() and entry.name.isdigit() and int(entry.name) > 0):
            problems.append(f"{entry}: not a version (versions are positive integers)")
            continue
        target = _loadable(entry)
        if target is None:
            problems.append(f"{entry}: neither a run directory nor a folder with one .onnx")
            continue
        versions[int(entry.name)] = target
    pinned = _pinned(folder, problems)
    if pinned is not None and pinned not in versions:
        problems.append(f"{folder / POLICY_FILE}: pins version {pinned}, which is not there")
    return RepositoryModel(folder.name, versions, pinned, tuple(problems))


def _loadable(version_dir: Path) -> Path | None:
    if is_run_dir(version_dir):
        return version_dir
    onnx = sorted(version_dir.glob("*.onnx"))
    return onnx[0] if len(onnx) == 1 else None


def _pinned(folder: Path, problems: list[str]) -> int | None:
    path = folder / POLICY_FILE
    if not path.is_file():
        return None
    try:
        version = json.loads(path.read_text("utf-8")).get("version")
    except (OSError, ValueError, AttributeError) as exc:
        problems.append(f"{path}: not a JSON object ({exc}); the newest version is live")
        return None
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        problems.append(f"{path}: 'version' must be a positive integer, got {version!r}")
        return None
    return version
