"""No code path unpickles a user's file: a malicious pickle handed as --weights or planted
in a run directory (weights, classifier head, resume state) is refused with a clear
message, and its payload never runs."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from helpers import SAMPLES, run_cli
from typer.testing import CliRunner

from imgcls import ImageClassifier
from imgcls.cli import app
from imgcls.errors import WeightsError


class Plant:
    """Unpickling this creates the file `marker`: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PAYLOAD_RAN"


def write_payloads(directory: Path, marker: Path) -> dict[str, Path]:
    """The same payload as a torch zip checkpoint, a legacy pickle and a bare pickle."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "zip.pth": directory / "evil.pth",
        "legacy.bin": directory / "evil.bin",
        "pickle.pt": directory / "evil.pt",
    }
    torch.save({"state_dict": Plant(marker)}, paths["zip.pth"])
    torch.save({"model": Plant(marker)}, paths["legacy.bin"], _use_new_zipfile_serialization=False)
    paths["pickle.pt"].write_bytes(pickle.dumps(Plant(marker)))
    return paths


def test_the_payload_is_live_when_unpickled(tmp_path: Path, marker: Path):
    # The control: without imgcls's refusal this file would run code on load.
    payload = write_payloads(tmp_path / "payloads", marker)["pickle.pt"]
    pickle.loads(payload.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("kind", ["zip.pth", "legacy.bin", "pickle.pt"])
def test_weights_option_refuses_a_malicious_pickle(tmp_path: Path, marker: Path, kind: str):
    evil = write_payloads(tmp_path / "payloads", marker)[kind]
    args = ["predict", str(SAMPLES / "cat.jpg"), "--model", "simple_cnn", "--weights", str(evil)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not a traceback
    assert str(evil) in result.stderr and "refused" in result.stderr
    assert not marker.exists()


def test_weights_refusal_in_a_real_process_prints_no_traceback(tmp_path: Path, marker: Path):
    evil = write_payloads(tmp_path / "payloads", marker)["zip.pth"]
    run = run_cli("predict", str(SAMPLES / "cat.jpg"), "--weights", str(evil))
    assert run.returncode == 2
    assert "never unpickles" in run.stderr and "Traceback" not in run.stderr
    assert not marker.exists()


def _planted_run(tiny_run: Path, tmp_path: Path, **config_changes) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, **config_changes}))
    return run


def test_run_directory_with_pickled_weights_is_refused(tiny_run, tmp_path, marker):
    payloads = write_payloads(tmp_path / "payloads", marker)
    run = _planted_run(tiny_run, tmp_path, weights="best.pth")
    shutil.copy(payloads["zip.pth"], run / "best.pth")
    with pytest.raises(WeightsError, match=r"best\.pth: refused"):
        ImageClassifier(str(run))
    # The same payload under the safetensors name is not a safetensors file either.
    shutil.copy(payloads["pickle.pt"], run / "best.safetensors")
    result = CliRunner().invoke(
        app, ["predict", str(SAMPLES / "cat.jpg"), "--model", str(run), "--weights",
              str(run / "best.safetensors")],
    )  # fmt: skip
    assert result.exit_code == 2 and "not a valid safetensors file" in result.stderr
    assert not marker.exists()


def test_run_directory_with_a_pickled_head_is_refused(tiny_run, tmp_path, marker):
    payloads = write_payloads(tmp_path / "payloads", marker)
    run = _planted_run(tiny_run, tmp_path, classifier="logreg", head="head.pkl")
    shutil.copy(payloads["pickle.pt"], run / "head.pkl")
    result = CliRunner().invoke(app, ["predict", str(SAMPLES / "cat.jpg"), "--model", str(run)])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "head.pkl: not an ONNX classifier head" in result.stderr
    assert not marker.exists()


def test_resume_with_a_pickled_state_is_refused(tiny_run, tmp_path, marker):
    payloads = write_payloads(tmp_path / "payloads", marker)
    run = _planted_run(tiny_run, tmp_path)
    shutil.copy(payloads["zip.pth"], run / "state.pt")
    data = json.loads((run / "config.json").read_text())["train"]["data"]
    args = ["train", data, "--out", str(run), "--resume", "--model", "simple_cnn",
            "--no-pretrained", "--epochs", "3", "--img-size", "32", "--workers", "0"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "state.pt: not a usable resume state" in result.stderr
    assert not marker.exists()
