"""Live against shadow: how a candidate version would have answered the live traffic.

A shadow version sees a sampled copy of the live requests; its answers are never
returned. Per image both answered, the comparison counts top-1 agreement, each one's
"unknown" answers, confidence and latency, and keeps the two top-1 labels by image hash
(the newest `MAX_REMEMBERED`), so that a correction (`POST /v1/feedback`) scores each one's
accuracy on the images users labelled.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from imgcls.inference.classifier import Predictions

__all__ = ["Comparison"]

MAX_REMEMBERED = 100_000  # image hashes whose two answers wait for a correction (~20 MB)


@dataclass
class _Side:
    unknown: int = 0
    confidence: float = 0.0
    latency_ms: float = 0.0
    correct: int = 0


@dataclass
class Comparison:
    """Running figures of one model's live version against its shadow."""

    live_version: str
    shadow_version: str
    sample: float  # share of live requests copied to the shadow
    images: int = 0  # images both answered
    agree: int = 0  # same top-1 label
    shed: int = 0  # requests not copied because the server was busy
    labelled: int = 0  # images with a correction, among those compared
    live: _Side = field(default_factory=_Side)
    shadow: _Side = field(default_factory=_Side)
    _answers: OrderedDict[str, tuple[str, str]] = field(default_factory=OrderedDict, repr=False)

    def add(
        self,
        digests: list[str],
        live: list[Predictions],
        shadow: list[Predictions],
        live_ms: float,
        shadow_ms: float,
    ) -> None:
        """One request's images, as both versions answered them (latency per request)."""
        for digest, mine, theirs in zip(digests, live, shadow, strict=True):
            self.images += 1
            self.agree += mine[0].label == theirs[0].label
            for side, top in ((self.live, mine[0]), (self.shadow, theirs[0])):
                side.unknown += top.unknown
                side.confidence += top.score
            self._answers[digest] = (mine[0].label, theirs[0].label)
            self._answers.move_to_end(digest)
            if len(self._answers) > MAX_REMEMBERED:
                self._answers.popitem(last=False)
        self.live.latency_ms += live_ms * len(digests)
        self.shadow.latency_ms += shadow_ms * len(digests)

    def add_label(self, digest: str, label: str) -> None:
        """A correction: the true label of an image, scored when both answered it."""
        answers = self._answers.pop(digest, None)
        if answers is None:
            return
        self.labelled += 1
        self.live.correct += answers[0] == label
        self.shadow.correct += answers[1] == label

    def to_dict(self) -> dict:
        """The figures `GET /v1/models/{name}/compare` answers (None where nothing counted)."""

        def share(count: float, total: int) -> float | None:
            return count / total if total else None

        def side(figures: _Side, version: str) -> dict:
            return {
                "version": version,
                "unknown_share": share(figures.unknown, self.images),
                "mean_confidence": share(figures.confidence, self.images),
                "mean_latency_ms": share(figures.latency_ms, self.images),
                "accuracy": share(figures.correct, self.labelled),
            }

        return {
            "images": self.images,
            "sample": self.sample,
            "shed": self.shed,
            "top1_agreement": share(self.agree, self.images),
            "labelled": self.labelled,
            "live": side(self.live, self.live_version),
            "shadow": side(self.shadow, self.shadow_version),
        }
