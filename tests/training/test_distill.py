"""Distillation (`imgcls train --teacher RUN`): the loss, a student of another input size
taught by a real run, and the teachers that cannot teach."""

from __future__ import annotations

import pytest
import torch
from helpers import write_photo_crops

from imgcls import ImageClassifier
from imgcls.errors import ConfigError
from imgcls.models.run_dir import read_run_config
from imgcls.training.config import TrainConfig
from imgcls.training.distill import distillation_loss
from imgcls.training.loop import train


def test_distillation_loss_is_zero_when_the_student_answers_as_the_teacher():
    teacher = torch.tensor([[4.0, 1.0, -2.0], [0.0, 3.0, 1.0]])
    assert distillation_loss(teacher.clone(), teacher, temperature=4.0).item() == pytest.approx(
        0.0, abs=1e-6
    )
    other = torch.tensor([[-2.0, 1.0, 4.0], [3.0, 0.0, 1.0]])
    assert distillation_loss(other, teacher, temperature=4.0).item() > 0.1


def test_a_student_of_another_size_learns_from_a_run_and_is_a_normal_run(tiny_run, tmp_path):
    """The teacher (32 px) sees the student's 24 px batches resized to its own input."""
    out = tmp_path / "student"
    result = train(
        TrainConfig(
            data=str(tiny_run.parent / "data"), out=str(out), model="simple_cnn",
            pretrained=False, epochs=1, batch_size=8, img_size=24, lr=3e-3, augment="none",
            workers=0, progress=False, teacher=str(tiny_run), tensorboard=False,
        )
    )  # fmt: skip
    assert result.epochs == 1 and result.calibration is not None
    assert read_run_config(out)["train"]["teacher"] == str(tiny_run)
    image = next((tiny_run.parent / "data" / "cat").iterdir())
    assert ImageClassifier(str(out)).classify_image(image)[0].label in {"cat", "espresso", "rocket"}


def test_a_teacher_of_other_classes_is_refused_before_training(tiny_run, tmp_path):
    write_photo_crops(tmp_path / "data", per_class=4, size=32)
    (tmp_path / "data" / "rocket").rename(tmp_path / "data" / "spaceship")
    config = TrainConfig(
        data=str(tmp_path / "data"), out=str(tmp_path / "run"), model="simple_cnn",
        pretrained=False, epochs=1, workers=0, progress=False, teacher=str(tiny_run),
    )  # fmt: skip
    with pytest.raises(ConfigError, match="teacher.*other classes"):
        train(config)
    assert not (tmp_path / "run").exists()


def test_a_teacher_that_is_not_a_run_directory_is_refused(tmp_path):
    write_photo_crops(tmp_path / "data", per_class=4, size=32)
    config = TrainConfig(
        data=str(tmp_path / "data"), out=str(tmp_path / "run"), model="simple_cnn",
        pretrained=False, epochs=1, workers=0, progress=False, teacher=str(tmp_path),
    )  # fmt: skip
    with pytest.raises(ConfigError, match="not a run directory"):
        train(config)
