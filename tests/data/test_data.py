"""Image-folder data sets: layouts, splits, corrupt files, and the training transforms."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import write_digit_images, write_photo_crops

from imgcls.data.augment import (
    Augmentation,
    ImageSurvey,
    choose_augmentation,
    survey_images,
    train_transform,
)
from imgcls.data.datasets import ImageFolder, find_splits
from imgcls.data.preprocess import Preprocess, preprocess_image
from imgcls.doctor.checks import diagnose
from imgcls.errors import DataError
from imgcls.evaluate import find_labelled_images


def write_images(folder: Path, count: int, gray: bool = False, value: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    for i in range(count):
        shape = (20, 24) if gray else (20, 24, 3)
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 255, shape, dtype=np.uint8))


def test_class_folders_are_split_stratified_and_seeded(tmp_path):
    write_images(tmp_path / "a", 10)
    write_images(tmp_path / "b", 5)
    splits = find_splits(tmp_path, val_split=0.2, seed=1)
    assert splits.class_names == ["a", "b"]
    val_counts = [sum(label == i for _, label in splits.val) for i in range(2)]
    assert val_counts == [2, 1]
    assert splits.class_counts() == [8, 4]
    assert splits.val == find_splits(tmp_path, val_split=0.2, seed=1).val
    assert splits.val != find_splits(tmp_path, val_split=0.2, seed=2).val
    assert not set(splits.train) & set(splits.val)


def test_train_val_test_layout_uses_its_folders(tmp_path):
    for split, count in (("train", 4), ("val", 2), ("test", 3)):
        write_images(tmp_path / split / "cat", count)
        write_images(tmp_path / split / "dog", count)
    splits = find_splits(tmp_path, val_split=0.5)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 4, 6)


def test_train_layout_without_val_splits_train(tmp_path):
    write_images(tmp_path / "train" / "cat", 5)
    write_images(tmp_path / "train" / "dog", 5)
    splits = find_splits(tmp_path, val_split=0.4)
    assert (len(splits.train), len(splits.val)) == (6, 4)


def test_corrupt_files_are_skipped_and_reported(tmp_path):
    write_images(tmp_path / "a", 3)
    write_images(tmp_path / "b", 3)
    (tmp_path / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp_path / "b" / "empty.png").write_bytes(b"")
    splits = find_splits(tmp_path, val_split=0)
    assert sorted(p.name for p, _ in splits.skipped) == ["broken.jpg", "empty.png"]
    assert len(splits.train) == 6


def test_fewer_than_two_classes_is_an_error(tmp_path):
    write_images(tmp_path / "only", 3)
    with pytest.raises(DataError, match="need at least 2"):
        find_splits(tmp_path)


def test_class_without_usable_images_is_an_error(tmp_path):
    write_images(tmp_path / "a", 3)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"b: no usable image"):
        find_splits(tmp_path)


def test_val_class_unknown_to_train_is_an_error(tmp_path):
    write_images(tmp_path / "train" / "a", 2)
    write_images(tmp_path / "train" / "b", 2)
    write_images(tmp_path / "val" / "c", 2)
    with pytest.raises(DataError, match="not in the training set"):
        find_splits(tmp_path)


def test_training_evaluation_and_the_doctor_read_the_same_files(tmp_path):
    """One reading of a tricky tree: hidden files and folders at any depth are skipped,
    nested folders belong to their class, extensions count in any case, links to files
    count and links to folders inside a class are not followed."""
    for split in ("train", "val", "test"):
        for name in ("cat", "dog"):
            write_images(tmp_path / split / name, 1)
    cat, dog = tmp_path / "train" / "cat", tmp_path / "train" / "dog"
    for path in (cat / "1.PNG", cat / "sub/deeper/2.JPG", cat / ".hidden.png",
                 cat / ".thumbs/3.png", tmp_path / "train/.cache/4.png",
                 tmp_path / "extra/cat/5.png"):  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), np.full((20, 24, 3), len(path.parts), np.uint8))
    (cat / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "LICENSE.txt").write_text("beside the class folders")
    (dog / "link.png").symlink_to(dog / "0.png")
    (dog / "linked_folder").symlink_to(tmp_path / "extra" / "cat", target_is_directory=True)
    (dog / "broken.png").symlink_to(tmp_path / "missing.png")
    expected = {
        "train": {"train/cat/0.png", "train/cat/1.PNG", "train/cat/sub/deeper/2.JPG",
                  "train/dog/0.png", "train/dog/link.png"},
        "val": {"val/cat/0.png", "val/dog/0.png"},
        "test": {"test/cat/0.png", "test/dog/0.png"},
    }  # fmt: skip

    def read(samples, names=None) -> set[tuple[str, str]]:
        """(path relative to the data, class name) of each sample: (image, class index)
        with `names`, else (image, class names) rows of one name each."""
        return {
            (path.relative_to(tmp_path).as_posix(), names[label] if names else label[0])
            for path, label in samples
        }

    splits = find_splits(tmp_path, val_split=0)
    evaluation = {split: find_labelled_images(tmp_path, split) for split in expected}
    report = diagnose(tmp_path)
    assert not splits.skipped and not report.corrupt
    for split, files in expected.items():
        labelled = {(file, file.split("/")[1]) for file in files}
        assert read(getattr(splits, split), splits.class_names) == labelled
        assert read(evaluation[split]) == labelled
        assert report.classes[split] == Counter(name for _, name in labelled)
    assert report.num_files == sum(map(len, expected.values()))
    assert report.non_images == ["train/cat/notes.txt"]


def test_split_folders_without_train_are_not_taken_for_classes(tmp_path):
    write_images(tmp_path / "val" / "a", 2)
    write_images(tmp_path / "test" / "a", 2)
    with pytest.raises(DataError, match="val/, test/ but no train/ folder"):
        find_splits(tmp_path)
    assert len(find_labelled_images(tmp_path, "val")) == 2


def test_grayscale_images_become_rgb_tensors(tmp_path):
    write_images(tmp_path / "a", 2, gray=True)
    write_images(tmp_path / "b", 2, gray=True)
    splits = find_splits(tmp_path, val_split=0)
    config = Preprocess(input_size=(3, 16, 16))
    image, label = ImageFolder(splits.train, train_transform(config, "strong", seed=0))[0]
    assert image.shape == (3, 16, 16) and label == 0


@pytest.mark.parametrize("augment", ["none", "light", "strong"])
def test_train_transform_output_and_normalisation_match_the_model(augment):
    config = Preprocess(input_size=(3, 24, 24), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    flat = np.full((40, 30, 3), 191, dtype=np.uint8)  # (0.75 - 0.5) / 0.25 = 1.0 everywhere
    transform = train_transform(config, augment, seed=0)
    out = transform(flat)
    assert out.shape == (3, 24, 24) and out.dtype == np.float32
    if augment != "strong":  # strong changes colours on purpose
        np.testing.assert_allclose(out, preprocess_image(flat, config), atol=0.02)


def test_train_transform_is_reproducible_with_a_seed():
    config = Preprocess(input_size=(3, 24, 24))
    image = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    first, second = train_transform(config, "strong"), train_transform(config, "strong")
    first.set_random_seed(5)
    second.set_random_seed(5)
    np.testing.assert_array_equal(first(image), second(image))


def test_unknown_augment_preset_is_refused():
    with pytest.raises(ValueError, match="augment must be one of"):
        train_transform(Preprocess(), "heavy")


def test_survey_finds_that_mirrored_digits_change_class(tmp_path):
    survey = survey_images(write_digit_images(tmp_path), seed=0)
    assert survey.images == 300 and survey.median_side == 28
    assert survey.accuracy > 0.9 and survey.flipped_accuracy < 0.6
    assert not survey.flips_keep_labels
    augmentation = choose_augmentation("light", 28, survey=survey)
    assert not augmentation.hflip and augmentation.crop == "shift"
    assert "mirrored images look like other classes" in augmentation.describe()


def test_survey_keeps_flips_for_photos(tmp_path):
    write_photo_crops(tmp_path, per_class=30, size=96)
    splits = find_splits(tmp_path, val_split=0)
    survey = survey_images(splits.train, seed=0)
    assert survey.median_side == 96 and survey.flips_keep_labels, survey
    augmentation = choose_augmentation("light", 224, survey=survey)
    assert augmentation.hflip and augmentation.crop == "random-resized"


def test_flip_as_asked_overrides_the_survey(tmp_path):
    survey = survey_images(write_digit_images(tmp_path, per_class=10), seed=0)
    assert choose_augmentation("light", 28, hflip=True, survey=survey).hflip
    assert not choose_augmentation("strong", 224, hflip=False).hflip
    assert choose_augmentation("none", 28, hflip=True, survey=survey).crop == "center"


def test_survey_decides_flips_of_small_images_only():
    """Pixels cannot tell a mirrored label from a mirrored orientation (grass blades lean
    the other way), so photos keep their flips whatever the thumbnails say."""
    glyph_like = ImageSurvey(
        images=100, median_side=28, chance=0.1, accuracy=0.98, flipped_accuracy=0.3, flip_z=8
    )
    assert not choose_augmentation("light", 224, survey=glyph_like).hflip
    large = dataclasses.replace(glyph_like, median_side=200)
    assert choose_augmentation("light", 224, survey=large).hflip
    assert not choose_augmentation("light", 32, survey=large).hflip  # a small input


def test_small_images_are_shifted_whole_not_cropped_away():
    """A bright square in the middle of a 28-px frame: the light preset for small images
    keeps it whole (off the frame's edges), where the photo preset's 35-100% random crop
    often cuts it."""
    config = Preprocess(input_size=(3, 28, 28), crop_pct=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    image = np.zeros((28, 28, 3), np.uint8)
    image[5:23, 5:23] = 255

    def share_cut(crop: str) -> float:
        transform = train_transform(config, Augmentation("light", hflip=False, crop=crop), seed=0)
        cut = 0
        for _ in range(200):
            bright = transform(image)[0] > 0.5
            edges = np.concatenate([bright[0], bright[-1], bright[:, 0], bright[:, -1]])
            cut += bool(edges.any())
        return cut / 200

    assert share_cut("shift") < 0.05
    assert share_cut("random-resized") > 0.3
