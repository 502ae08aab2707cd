"""Conformal prediction sets (imgcls.trust.conformal): the coverage guarantee on data made
here, sets that shrink as the model improves, per-class thresholds for multi-label runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from imgcls.trust.conformal import (
    Conformal,
    conformal_quantile,
    fit_conformal,
    label_scores,
    set_metrics,
)

CLASSES = 6


def gaussian_classes(separation: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` points of CLASSES Gaussian classes in 8 dimensions, means `separation` apart."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(size=(CLASSES, 8)) * separation
    labels = rng.integers(0, CLASSES, n)
    return means[labels] + rng.normal(size=(n, 8)), labels


def model_probabilities(separation: float, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Held-out probabilities and labels of a logistic regression trained on other points."""
    x, y = gaussian_classes(separation, 600, seed=1)
    model = LogisticRegression(max_iter=1000).fit(x, y)
    x, y = gaussian_classes(separation, n, seed=2)
    return model.predict_proba(x), y


def test_quantile_is_the_finite_sample_order_statistic():
    scores = np.arange(1, 10) / 10  # n = 9
    assert conformal_quantile(scores, 0.9) == pytest.approx(0.9)  # ceil(10 * 0.9) = 9th
    assert conformal_quantile(scores, 0.8) == pytest.approx(0.8)  # ceil(8.0) = 8th
    assert conformal_quantile(scores, 0.95) == math.inf  # ceil(9.5) = 10 > n: every label


@pytest.mark.parametrize("score", ["lac", "aps", "raps"])
def test_coverage_at_0_9_holds_over_random_splits(score):
    probabilities, labels = model_probabilities(separation=0.6)
    n_cal, level, repeats = 500, 0.9, 100
    coverages = []
    for seed in range(repeats):
        order = np.random.default_rng(seed).permutation(len(labels))
        cal, test = order[:n_cal], order[n_cal:]
        conformal = fit_conformal(probabilities[cal], labels[cal], score)
        sets = conformal.sets(probabilities[test], level)
        coverages.append(sets[np.arange(len(test)), labels[test]].mean())
    n_test = len(labels) - n_cal
    # Per split: binomial noise of the test images plus the Beta spread of a calibrated
    # threshold; the mean over splits lies in [level, level + 1/(n+1)] up to that noise.
    spread = math.sqrt(level * (1 - level) * (1 / n_test + 1 / (n_cal + 2)))
    mean = float(np.mean(coverages))
    assert level - 3 * spread / math.sqrt(repeats) <= mean
    assert mean <= level + 1 / (n_cal + 1) + 3 * spread / math.sqrt(repeats)
    assert np.mean(np.array(coverages) < level - 3 * spread) <= 0.02


def test_sets_shrink_as_the_model_gets_better():
    sizes = []
    for separation in (0.4, 0.8, 1.6):
        probabilities, labels = model_probabilities(separation)
        conformal = fit_conformal(probabilities[:1000], labels[:1000])
        sizes.append(conformal.sets(probabilities[1000:], 0.9).sum(axis=1).mean())
    assert sizes[0] > sizes[1] > sizes[2]
    assert sizes[2] < 1.5 and sizes[0] > 2


def test_aps_score_is_the_mass_ranked_at_or_above_the_label():
    probabilities = np.array([[0.5, 0.2, 0.3]])
    np.testing.assert_allclose(label_scores(probabilities, "aps"), [[0.5, 1.0, 0.8]])
    np.testing.assert_allclose(label_scores(probabilities, "lac"), [[0.5, 0.8, 0.7]])


def test_other_levels_come_from_the_stored_scores_after_a_round_trip():
    probabilities, labels = model_probabilities(0.6, n=800)
    fitted = fit_conformal(probabilities, labels, "raps")
    loaded = Conformal.from_config(fitted.to_config())
    assert loaded.score == "raps" and set(loaded.thresholds) == {0.8, 0.9, 0.95}
    for level in (0.8, 0.85, 0.9, 0.99):
        assert loaded.threshold(level) == pytest.approx(fitted.threshold(level), abs=1e-6)
    np.testing.assert_array_equal(
        loaded.sets(probabilities, 0.85), fitted.sets(probabilities, 0.85)
    )
    assert loaded.threshold(1.0) == math.inf  # every label: the only sure set
    with pytest.raises(ValueError, match=r"coverage must be in \(0, 1\]"):
        loaded.threshold(0.0)


def test_multi_label_runs_get_a_threshold_per_class_with_per_class_coverage():
    rng = np.random.default_rng(0)
    targets = rng.random((20000, 4)) < [0.5, 0.3, 0.2, 0.1]
    noise = [0.15, 0.25, 0.35, 0.45]  # class 3 is the hardest
    probabilities = np.clip(targets * 0.7 + 0.15 + rng.normal(0, noise, targets.shape), 0, 1)
    conformal = fit_conformal(probabilities[:10000], targets[:10000].astype(int))
    assert conformal.multi_label and conformal.threshold(0.9).shape == (4,)
    sets = conformal.sets(probabilities[10000:], 0.9)
    for k in range(4):
        present, n_cal = targets[10000:, k], targets[:10000, k].sum()
        spread = math.sqrt(0.09 * (1 / present.sum() + 1 / n_cal))
        assert sets[present, k].mean() >= 0.9 - 3 * spread
    assert Conformal.from_config(conformal.to_config()).threshold(0.9) == pytest.approx(
        conformal.threshold(0.9)
    )


def test_set_metrics_names_the_class_covered_least():
    sets = np.array([[1, 0], [1, 1], [0, 1], [1, 0]], bool)
    metrics = set_metrics(sets, np.array([0, 0, 0, 1]), ["a", "b"])
    assert metrics["coverage"] == 0.5 and metrics["max_set_size"] == 2
    assert metrics["singleton_share"] == 0.75 and metrics["weakest_class"] == "b"
    assert metrics["per_class_coverage"] == {"a": pytest.approx(2 / 3), "b": 0.0}
