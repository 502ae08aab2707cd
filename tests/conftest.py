"""Shared fixtures: the shipped sample photos, one loaded default classifier, a tiny run.
Shared functions and constants are in helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import SAMPLES, write_format_variants, write_photo_crops


@pytest.fixture(scope="session", autouse=True)
def export_cache(tmp_path_factory) -> Path:
    """One ONNX export cache for the session (and its subprocesses), not the user's."""
    path = tmp_path_factory.mktemp("onnx-cache")
    os.environ["IMGCLS_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def classifier():
    from imgcls import ImageClassifier

    return ImageClassifier()


@pytest.fixture(scope="session")
def espresso_variants(tmp_path_factory) -> dict[str, Path]:
    return write_format_variants(SAMPLES / "espresso.jpg", tmp_path_factory.mktemp("variants"))


@pytest.fixture
def no_network(monkeypatch) -> list[str]:
    """Block every outgoing connection in this process; returns the attempts made."""
    import socket

    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A simple_cnn run directory trained for a few seconds on 32 px photo crops: a real
    run to load, serve and tamper with, at a fraction of the default model's cost."""
    from imgcls.training.config import TrainConfig
    from imgcls.training.loop import train

    root = tmp_path_factory.mktemp("tiny_run")
    write_photo_crops(root / "data", per_class=12, size=32)
    out = root / "run"
    train(
        TrainConfig(
            data=str(root / "data"), out=str(out), model="simple_cnn", pretrained=False,
            epochs=2, batch_size=8, img_size=32, lr=3e-3, augment="none", workers=0,
            progress=False,
        )
    )  # fmt: skip
    return out
