"""ImageClassifier on real photos: right answers, every input form, batching."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from helpers import CAT_IDS, ESPRESSO_ID
from PIL import Image

from imgcls import ImageClassifier, ImageError, Prediction, load_image
from imgcls.data.preprocess import preprocess_image


def test_cat_photo_gives_a_domestic_cat(classifier, samples):
    predictions = classifier.classify_image(samples / "cat.jpg")
    assert predictions[0].class_id in CAT_IDS
    assert sum(p.class_id in CAT_IDS for p in predictions[:3]) == 3


def test_espresso_photo_gives_espresso(classifier, samples):
    top = classifier.classify_image(samples / "espresso.jpg")[0]
    assert (top.class_id, top.label, top.index) == (ESPRESSO_ID, "espresso", 967)
    assert top.score > 0.9


def test_every_format_of_the_same_photo_gives_the_same_top1(classifier, espresso_variants):
    names = sorted(espresso_variants)
    results = classifier.classify_images([espresso_variants[n] for n in names], top_k=1)
    top1 = {name: result[0].class_id for name, result in zip(names, results, strict=True)}
    assert set(top1.values()) == {ESPRESSO_ID}, top1
    for variant in ("gray", "palette", "gif", "exif_rotated", "cmyk"):
        assert variant in top1


def test_rotated_photo_without_exif_would_differ(classifier, espresso_variants):
    """The EXIF test above is meaningful: ignoring orientation changes the answer."""
    upright = classifier.classify_image(espresso_variants["jpeg"])[0]
    sideways = np.asarray(Image.open(espresso_variants["exif_rotated"]).convert("RGB"))
    stored = classifier.classify_image(sideways)[0]
    assert stored.score < upright.score - 0.05


def test_path_bytes_array_and_pil_agree(classifier, samples):
    path = samples / "cat.jpg"
    array = np.asarray(Image.open(path).convert("RGB"))
    results = [
        classifier.classify_image(source)
        for source in (path, str(path), path.read_bytes(), array, Image.open(path))
    ]
    for result in results[1:]:
        assert [p.index for p in result] == [p.index for p in results[0]]
        assert np.allclose([p.score for p in result], [p.score for p in results[0]], atol=1e-6)


def test_batched_equals_one_by_one(samples):
    clf = ImageClassifier(batch_size=2)  # three images: a full batch and a partial one
    paths = sorted(samples.glob("*.jpg"))
    batched = clf.classify_images(paths, top_k=3)
    single = [clf.classify_image(p, top_k=3) for p in paths]
    for b, s in zip(batched, single, strict=True):
        assert [p.index for p in b] == [p.index for p in s]
        assert np.allclose([p.score for p in b], [p.score for p in s], atol=1e-5)


def test_scores_are_sorted_probabilities(classifier, samples):
    predictions = classifier.classify_image(samples / "rocket.jpg", top_k=1000)
    scores = [p.score for p in predictions]
    assert len(predictions) == 1000 and scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0, abs=1e-6)
    assert len({p.index for p in predictions}) == 1000


def test_top_k_is_capped_at_the_class_count_and_must_be_positive(classifier, samples):
    assert len(classifier.classify_image(samples / "cat.jpg", top_k=5000)) == 1000
    with pytest.raises(ValueError, match="top_k"):
        classifier.classify_image(samples / "cat.jpg", top_k=0)


def test_prediction_serialises_with_the_contract_fields(classifier, samples):
    predictions = classifier.classify_image(samples / "espresso.jpg", top_k=2)
    p = predictions[0]
    assert isinstance(p, Prediction)
    assert p.to_dict() == {
        "label": "espresso",
        "class_id": ESPRESSO_ID,
        "index": 967,
        "score": p.score,
        "unknown": False,
        "present": True,
    }
    # A single-label model asserts its top-1 alone: the result's `labels`.
    assert not predictions[1].present and predictions.labels == ("espresso",)
    assert predictions.to_dict()["labels"] == ["espresso"]


def test_bad_inputs_raise_the_documented_errors(classifier, tmp_path):
    with pytest.raises(FileNotFoundError):
        classifier.classify_image(tmp_path / "missing.jpg")
    (tmp_path / "fake.jpg").write_text("not an image")
    with pytest.raises(ImageError, match="fake.jpg"):
        classifier.classify_image(tmp_path / "fake.jpg")
    assert issubclass(ImageError, ValueError)


def test_classify_paths_keeps_order_and_isolates_failures(classifier, samples, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    paths = [
        samples / "cat.jpg",
        tmp_path / "bad.jpg",
        tmp_path / "gone.jpg",
        samples / "espresso.jpg",
    ]
    outcomes = list(classifier.classify_paths(paths, top_k=1))
    assert [p for p, _ in outcomes] == [str(p) for p in paths]
    assert outcomes[0][1][0].class_id in CAT_IDS
    assert isinstance(outcomes[1][1], ImageError)
    assert isinstance(outcomes[2][1], FileNotFoundError)
    assert outcomes[3][1][0].class_id == ESPRESSO_ID


def test_a_bundle_pickles_and_answers_as_its_classifier_with_no_file(tiny_run, tmp_path):
    """What Ray ships to its actors: a run's model, temperature and k-NN "unknown" rule."""
    import pickle
    import shutil

    from imgcls.data.images import EncodedImage
    from imgcls.inference.classifier import ModelBundle

    run = shutil.copytree(tiny_run, tmp_path / "run")
    original = ImageClassifier(str(run), backend="onnx")
    bundle = pickle.loads(pickle.dumps(original.bundle()))
    assert isinstance(bundle, ModelBundle) and bundle.rejection.score == "knn"
    shutil.rmtree(run)  # the bundle needs none of the run's files
    shipped = ImageClassifier(bundle, threads=1)
    photos = sorted((tiny_run.parent / "data").rglob("*.jpg"))[::6]
    files = [EncodedImage(str(p), p.read_bytes()) for p in photos]  # read elsewhere
    expected = list(original.classify_paths(photos, top_k=3))
    answers = list(shipped.classify_paths(files, top_k=3))
    assert [path for path, _ in answers] == [path for path, _ in expected]
    for (_, got), (_, want) in zip(answers, expected, strict=True):
        assert [(p.index, p.unknown) for p in got] == [(p.index, p.unknown) for p in want]
        assert np.allclose([p.score for p in got], [p.score for p in want], atol=1e-6)


def test_a_classifier_on_pytorch_makes_no_bundle(tiny_run):
    from imgcls.errors import ModelError

    with pytest.raises(ModelError, match="only an ONNX Runtime classifier makes a bundle"):
        ImageClassifier(str(tiny_run), backend="torch").bundle()


def test_large_jpeg_reduced_decoding_keeps_the_answer(classifier, samples, tmp_path):
    photo = cv2.imread(str(samples / "espresso.jpg"))
    path = tmp_path / "large.jpg"
    cv2.imwrite(str(path), cv2.resize(photo, (4000, 3000), interpolation=cv2.INTER_CUBIC))
    fast = classifier.classify_image(path, top_k=1000)  # decoded at 1/8 scale
    full = preprocess_image(load_image(path), classifier.preprocess)[None]
    reference = classifier.predict_batch(full, top_k=1000)[0]
    assert fast[0].class_id == reference[0].class_id == ESPRESSO_ID
    by_index = {p.index: p.score for p in reference}
    assert max(abs(p.score - by_index[p.index]) for p in fast) < 0.02
