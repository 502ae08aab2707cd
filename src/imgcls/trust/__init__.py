"""Scores a user can rely on: temperature calibration and the "unknown" rule
(`calibration`), per-class thresholds of multi-label runs (`multilabel`), conformal
prediction sets (`conformal`) and hierarchical answers over a class taxonomy
(`hierarchy`, with WordNet's tree of the ImageNet classes)."""
