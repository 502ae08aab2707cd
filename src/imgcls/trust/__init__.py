"""Scores a user can rely on: temperature calibration and the "unknown" rule
(`calibration`), and per-class thresholds of multi-label runs (`multilabel`)."""
