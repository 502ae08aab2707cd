"""The eval transform matches timm's own (Pillow-based) one."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from timm.data import create_transform, resolve_data_config

from imgcls.data.preprocess import Preprocess, preprocess_image
from imgcls.inference.classifier import softmax

# Tolerances: the resize is timm's own filter (Pillow's bicubic) on the crop's region, so
# inputs differ only by rounding, and a probability by far less than a near-tie's margin.
MAX_MEAN_INPUT_DIFF_GRAY_LEVELS = 0.1
MAX_PROBABILITY_DIFF = 0.01
# A large JPEG is DCT-scaled while decoding (down to 1.5x the resize size): its inputs
# drift from the reference's full decode by up to a few gray levels, its answers little
# (top-1 agreement 97.5% on 400 held-out crops, benchmarks/preprocess_parity.py).
MAX_REDUCED_PROBABILITY_DIFF = 0.05


@pytest.fixture(scope="module")
def timm_transform(classifier):
    return create_transform(**resolve_data_config({}, model=classifier.module))


@pytest.mark.parametrize("name", ["cat.jpg", "espresso.jpg", "rocket.jpg"])
@pytest.mark.parametrize(
    "size", [None, (150, 100), (1800, 1200)], ids=["native", "upscale", "downscale"]
)
def test_preprocessing_matches_timm_eval_transform(classifier, timm_transform, samples, name, size):
    pil = Image.open(samples / name).convert("RGB")
    if size is not None:
        pil = pil.resize(size, Image.Resampling.BICUBIC)
    ours = preprocess_image(np.asarray(pil), classifier.preprocess)
    theirs = timm_transform(pil).numpy()
    assert ours.shape == theirs.shape == (3, 224, 224)
    std = np.asarray(classifier.preprocess.std, dtype=np.float32)[:, None, None]
    gray_levels = np.abs(ours - theirs) * std * 255.0
    assert gray_levels.mean() < MAX_MEAN_INPUT_DIFF_GRAY_LEVELS
    p_ours, p_theirs = softmax(classifier.runtime(np.stack([ours, theirs])))
    assert p_ours.argmax() == p_theirs.argmax()
    assert np.abs(p_ours - p_theirs).max() < MAX_PROBABILITY_DIFF


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("longer_side", [500, 1600])
def test_decoded_jpegs_answer_as_timms_pipeline(classifier, timm_transform, index, longer_side):
    from sklearn.datasets import load_sample_images  # two photos no other test uses

    photo = Image.fromarray(load_sample_images().images[index])
    scale = longer_side / max(photo.size)
    photo = photo.resize((round(photo.width * scale), round(photo.height * scale)))
    encoded = io.BytesIO()
    photo.save(encoded, "JPEG", quality=90)
    ours = classifier.prepare(encoded.getvalue())
    theirs = timm_transform(Image.open(encoded).convert("RGB")).numpy()
    p_ours, p_theirs = softmax(classifier.runtime(np.stack([ours, theirs])))
    assert p_ours.argmax() == p_theirs.argmax()
    assert np.abs(p_ours - p_theirs).max() < MAX_REDUCED_PROBABILITY_DIFF


def test_output_goes_into_a_preallocated_slot():
    config = Preprocess(input_size=(3, 32, 48))
    batch = np.zeros((2, 3, 32, 48), np.float32)
    image = np.full((100, 60, 3), 255, np.uint8)
    result = preprocess_image(image, config, out=batch[1])
    assert result is batch[1] or np.shares_memory(result, batch)
    expected = (1.0 - np.asarray(config.mean)) / np.asarray(config.std)
    assert np.allclose(batch[1].mean(axis=(1, 2)), expected, atol=1e-5)
    assert (batch[0] == 0).all()


def test_config_round_trips_through_a_dict():
    config = Preprocess(input_size=(3, 240, 240), interpolation="bilinear", crop_pct=0.9)
    assert Preprocess.from_config(config.to_dict()) == config


@pytest.mark.parametrize("crop_pct", [0.875, 1.0])  # 1.0: the crop's edge is the image's
def test_every_image_size_gives_the_model_input_shape(crop_pct):
    config = Preprocess(input_size=(3, 224, 224), crop_pct=crop_pct)
    for height in (1, 2, 29, 58, 113):
        for width in (1, 3, 29, 44, 59, 997):
            image = np.zeros((height, width, 3), np.uint8)
            assert preprocess_image(image, config).shape == (3, 224, 224), (height, width)
