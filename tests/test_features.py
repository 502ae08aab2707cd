"""Embeddings of a folder of images, from Python and from `imgcls features`."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import write_photo_crops
from typer.testing import CliRunner

from imgcls.cli import app
from imgcls.errors import DataError
from imgcls.features import extract_features


@pytest.fixture
def crops(tmp_path):
    return write_photo_crops(tmp_path / "crops", per_class=2, size=32)


def test_features_of_a_folder_are_saved_as_npz(crops, tmp_path):
    (crops / "rocket" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    found = extract_features(crops, "simple_cnn")
    assert found.vectors.shape == (6, 256) and found.vectors.dtype == np.float32
    assert found.labels == ["cat", "cat", "espresso", "espresso", "rocket", "rocket"]
    assert len(found.failures) == 1 and "broken.jpg" in str(found.failures[0])
    written = found.save(tmp_path / "feats")  # numpy's habit: .npz added
    assert written == tmp_path / "feats.npz"
    saved = np.load(written)
    assert list(saved["paths"]) == found.paths and np.array_equal(saved["features"], found.vectors)


def test_a_folder_without_images_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no image files"):
        extract_features(tmp_path, "simple_cnn")


def test_an_unwritable_out_is_one_line_and_exit_code_1(crops, tmp_path):
    (tmp_path / "file").write_text("a file where a folder should be")
    out = tmp_path / "file" / "feats.npz"
    result = CliRunner().invoke(
        app, ["features", str(crops), "--model", "simple_cnn", "--out", str(out)]
    )
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # no traceback
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "feats.npz" in lines[0], lines
    assert "cannot write" in lines[0]
