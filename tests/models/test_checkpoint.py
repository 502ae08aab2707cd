"""Checkpoint writes: a full disk or a read-only run directory is a clear error, and the
previous checkpoint stays intact and loadable."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from imgcls import ImageClassifier
from imgcls.cli import app
from imgcls.errors import WriteError
from imgcls.models.weights import load_state_dict_file, save_weights
from imgcls.training.run_writer import load_run_state

CHECKPOINT_FILES = ("best.safetensors", "last.safetensors", "state.pt", "config.json")


def _snapshot(run: Path) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in CHECKPOINT_FILES}


def _resume_for_one_more_epoch(run: Path) -> object:
    args = [
        "train", _train_config(run)["data"], "--out", str(run), "--resume", "--model", "simple_cnn",
        "--no-pretrained", "--epochs", "3", "--batch-size", "8", "--img-size", "32",
        "--lr", "3e-3", "--augment", "none", "--workers", "0", "--json",
    ]  # fmt: skip
    return CliRunner().invoke(app, args)


def test_disk_full_while_checkpointing_is_a_clear_error_and_keeps_the_last_checkpoint(
    tiny_run: Path, tmp_path: Path, monkeypatch
):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = _snapshot(run)
    real_fsync = os.fsync

    def disk_full_for_weights(fd: int) -> None:
        # ENOSPC where a real full disk reports it: when the checkpoint's data is flushed.
        # Only weights and resume state fail, so the error comes from the checkpoint step.
        name = os.readlink(f"/proc/self/fd/{fd}")
        if ".safetensors." in name or ".state.pt." in name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full_for_weights)
    result = _resume_for_one_more_epoch(run)

    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # no traceback
    assert "No space left on device" in result.stderr
    assert "safetensors: cannot write" in result.stderr and "left intact" in result.stderr
    for name in ("best.safetensors", "last.safetensors", "state.pt"):
        assert (run / name).read_bytes() == before[name]
    assert not list(run.glob(".*.tmp"))  # no half-written temporaries left behind
    assert load_run_state(run / "state.pt")["epoch"] == 2
    reference = load_state_dict_file(tiny_run / "last.safetensors")
    for key, value in load_state_dict_file(run / "last.safetensors").items():
        assert torch.equal(value, reference[key])
    photo = next(Path(_train_config(run)["data"]).rglob("*.jpg"))
    assert ImageClassifier(str(run)).classify_image(photo)[0].label in {"cat", "espresso", "rocket"}


def _train_config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())["train"]


def test_read_only_run_directory_is_a_clear_error_and_keeps_the_checkpoint(
    tiny_run: Path, tmp_path: Path, monkeypatch
):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = _snapshot(run)
    run.chmod(0o555)
    try:
        if os.access(run, os.W_OK):
            # Root ignores the mode bits: refuse new files in the run directory the way a
            # read-only directory does, so the error path is still exercised.
            real_mkstemp = tempfile.mkstemp

            def read_only_mkstemp(*args, **kwargs):
                if Path(kwargs.get("dir", "")) == run:
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
                return real_mkstemp(*args, **kwargs)

            monkeypatch.setattr(tempfile, "mkstemp", read_only_mkstemp)
        result = _resume_for_one_more_epoch(run)
    finally:
        run.chmod(0o755)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Permission denied" in result.stderr and str(run) in result.stderr
    assert _snapshot(run) == before


def test_save_weights_reports_the_file_and_reason(tmp_path: Path):
    missing_dir = tmp_path / "gone" / "last.safetensors"
    with pytest.raises(WriteError, match=r"gone/last\.safetensors: cannot write"):
        save_weights(missing_dir, {"w": torch.zeros(2)})
