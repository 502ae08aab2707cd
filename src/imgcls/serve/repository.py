"""A model repository on disk, in Triton's and TorchServe's layout:

    DIR/<name>/<version>/        a run directory, or a folder holding one .onnx file
    DIR/<name>/policy.json       optional: {"version": N} pins the live version;
                                 {"shadow": {"version": M, "sample": 0.1}} runs M as a
                                 shadow on that share of the live requests (compare.py)

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
    shadow: int | None = None  # a version that sees a sampled copy of live requests
    shadow_sample: float = 1.0  # the share of requests copied to it
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
    policy = _policy(folder, problems)
    pinned = _version(policy, "version", folder, problems)
    if pinned is not None and pinned not in versions:
        problems.append(f"{folder / POLICY_FILE}: pins version {pinned}, which is not there")
    shadow_policy = policy.get("shadow") or {}
    shadow = _version(shadow_policy, "version", folder, problems)
    sample = shadow_policy.get("sample", 1.0)
    if isinstance(sample, bool) or not isinstance(sample, int | float) or not 0 < sample <= 1:
        problems.append(
            f"{folder / POLICY_FILE}: shadow 'sample' must be in (0, 1], got {sample!r}"
        )
        shadow = None
    if shadow is not None and shadow not in versions:
        problems.append(f"{folder / POLICY_FILE}: shadow version {shadow} is not there")
        shadow = None
    return RepositoryModel(folder.name, versions, pinned, shadow, float(sample), tuple(problems))


def _loadable(version_dir: Path) -> Path | None:
    if is_run_dir(version_dir):
        return version_dir
    onnx = sorted(version_dir.glob("*.onnx"))
    return onnx[0] if len(onnx) == 1 else None


def _policy(folder: Path, problems: list[str]) -> dict:
    path = folder / POLICY_FILE
    if not path.is_file():
        return {}
    try:
        policy = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        problems.append(f"{path}: not JSON ({exc}); the newest version is live")
        return {}
    if not isinstance(policy, dict):
        problems.append(f"{path}: not a JSON object; the newest version is live")
        return {}
    return policy


def _version(policy: dict, key: str, folder: Path, problems: list[str]) -> int | None:
    if not isinstance(policy, dict) or key not in policy:
        return None
    version = policy[key]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        problems.append(
            f"{folder / POLICY_FILE}: {key!r} must be a positive integer, got {version!r}"
        )
        return None
    return version
