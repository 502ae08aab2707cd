"""Temperature scaling, calibration error, thresholds and the k-NN score, on numbers
whose right answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from imgcls.inference.heads import head_log_probabilities
from imgcls.trust.calibration import (
    KnnScorer,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    fit_trust,
    operating_points,
    softmax,
    uncalibrated,
)


def calibrated_logits(n: int = 4000, classes: int = 5, seed: int = 0):
    """Logits and labels drawn from softmax(logits): calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, classes))
    probabilities = softmax(logits)
    labels = np.array([rng.choice(classes, p=row) for row in probabilities])
    return logits, labels


def top1_ece(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    probabilities = softmax(logits / temperature)
    return expected_calibration_error(
        probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
    )


def test_temperature_scaling_undoes_a_deliberately_over_confident_model():
    logits, labels = calibrated_logits()
    over_confident = logits * 4  # the same ranking, 4x too sure of itself
    fit, held_out = slice(0, 2000), slice(2000, None)
    temperature = fit_temperature(over_confident[fit], labels[fit])
    assert temperature == pytest.approx(4, rel=0.15)
    before = top1_ece(over_confident[held_out], labels[held_out])
    after = top1_ece(over_confident[held_out], labels[held_out], temperature)
    assert before > 0.15 and after < before / 3, (before, after)


def test_an_under_confident_model_gets_a_temperature_below_one():
    logits, labels = calibrated_logits(seed=1)
    assert fit_temperature(logits / 3, labels) == pytest.approx(1 / 3, rel=0.15)


def test_a_validation_set_without_errors_keeps_the_scores():
    logits = np.array([[3.0, 0.0], [0.0, 2.0], [1.0, 0.5]])
    assert fit_temperature(logits, np.array([0, 1, 0])) == 1.0


def knn_votes(seed: int, n: int = 1000, classes: int = 10, k: int = 5):
    """Probabilities as a k-NN head gives them (vote shares, often exact zeros for the true
    class), from neighbours that are right with a chance drawn per image."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    right = rng.random((n, k)) < rng.uniform(0.3, 1.0, n)[:, None]
    others = (labels[:, None] + rng.integers(1, classes, (n, k))) % classes
    neighbours = np.where(right, labels[:, None], others)
    votes = np.stack([np.bincount(row, minlength=classes) for row in neighbours])
    return votes / k, labels


def test_a_head_with_zero_probabilities_is_calibrated_not_flattened():
    (val_proba, val_labels), (test_proba, test_labels) = knn_votes(0), knn_votes(1)
    val_logits, test_logits = (head_log_probabilities(p) for p in (val_proba, test_proba))
    assert np.isfinite(val_logits).all()
    temperature = fit_temperature(val_logits, val_labels)
    # log(0) clipped at 1e-30 gave T ~ 13, which flattens every split vote towards uniform
    # and doubles the error; the floor keeps T near 1 and the error falls.
    assert temperature < 2, temperature
    before = top1_ece(test_logits, test_labels)
    assert top1_ece(test_logits, test_labels, temperature) < before


def test_uncalibrated_inverts_temperature_scaling():
    logits, _ = calibrated_logits(n=50)
    assert np.allclose(uncalibrated(softmax(logits / 2.5), 2.5), softmax(logits), atol=1e-9)


def test_threshold_for_a_target_coverage_answers_that_share():
    scores = np.linspace(0.01, 1.0, 100)
    threshold = choose_threshold(scores, np.ones(100, bool), target_coverage=0.8)
    assert (scores >= threshold).mean() == pytest.approx(0.8)
    default = choose_threshold(scores, np.ones(100, bool))  # 95% by default
    assert (scores >= default).mean() == pytest.approx(0.95)


def test_threshold_for_a_target_precision_meets_it_on_the_answered_images():
    rng = np.random.default_rng(0)
    scores = rng.uniform(size=500)
    correct = rng.uniform(size=500) < scores  # higher scores are right more often
    threshold = choose_threshold(scores, correct, target_precision=0.9)
    answered = scores >= threshold
    assert correct[answered].mean() >= 0.9
    # the lowest such threshold: one step lower breaks the target
    lower = np.sort(scores[scores < threshold])[-1]
    assert correct[scores >= lower].mean() < 0.9


def test_operating_points_trade_coverage_for_accuracy():
    rng = np.random.default_rng(0)
    scores = rng.uniform(size=1000)
    correct = rng.uniform(size=1000) < scores
    points = operating_points(scores, correct, (0.0, 0.5, 0.9, 1.1))
    assert points[0]["coverage"] == 1.0 and points[-1]["accuracy"] is None
    coverage = [p["coverage"] for p in points]
    accuracy = [p["accuracy"] for p in points[:-1]]
    assert coverage == sorted(coverage, reverse=True) and accuracy == sorted(accuracy)


def test_knn_score_is_high_near_the_training_features_and_low_far_away(tmp_path):
    rng = np.random.default_rng(0)
    centre = rng.normal(size=64)
    training = centre + rng.normal(0, 0.3, (200, 64))
    scorer = KnnScorer(training)
    near = scorer(centre + rng.normal(0, 0.3, (20, 64)))
    strangers = rng.normal(size=(20, 64))
    far = scorer(strangers)
    assert near.min() > far.max()
    scorer.save(tmp_path / "reference.safetensors")
    reloaded = KnnScorer.load(tmp_path / "reference.safetensors")
    assert np.allclose(reloaded(strangers), far)


def test_fit_trust_reports_calibration_and_the_rule_it_chose():
    logits, labels = calibrated_logits(n=600)
    calibration, reject, knn = fit_trust(logits * 3, labels, score="max_prob")
    assert knn is None and calibration["temperature"] > 2
    assert calibration["val_ece_after"] < calibration["val_ece_before"]
    assert calibration["val_nll_after"] < calibration["val_nll_before"]
    assert reject["score"] == "max_prob" and reject["target_coverage"] == 0.95
    assert reject["val_coverage"] >= 0.95
