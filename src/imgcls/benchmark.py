"""Model-only speed: images/s and latency percentiles of one runtime at one batch size.

The input is a real photo, preprocessed, repeated to the batch size: random inputs can be
several times slower on CPUs (denormal floats in the activations), which no user sees.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from imgcls.inference.classifier import ImageClassifier

__all__ = ["BenchmarkResult", "benchmark", "synthetic_photo", "time_calls"]


@dataclass(frozen=True)
class BenchmarkResult:
    model: str
    backend: str
    precision: str  # fp32, bf16 or int8
    batch_size: int
    images_per_s: float
    p50_ms: float  # latency of one model call (one batch)
    p90_ms: float
    p99_ms: float
    calls: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def benchmark(
    classifier: ImageClassifier,
    image: np.ndarray,
    batch_size: int,
    seconds: float = 5.0,
    warmup: int = 3,
) -> BenchmarkResult:
    """Call the model on a batch of `image` (decoded RGB) for about `seconds`."""
    batch = np.ascontiguousarray(np.repeat(classifier.prepare(image)[None], batch_size, axis=0))
    latencies = time_calls(classifier.runtime, batch, seconds, warmup)
    p50, p90, p99 = np.percentile(latencies * 1000.0, [50, 90, 99])
    return BenchmarkResult(
        model=classifier.name,
        backend=classifier.runtime.backend,
        precision=classifier.precision,
        batch_size=batch_size,
        images_per_s=batch_size * len(latencies) / latencies.sum(),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        calls=len(latencies),
    )


def time_calls(
    run: Callable[[np.ndarray], Any], batch: np.ndarray, seconds: float, warmup: int = 3
) -> np.ndarray:
    """Seconds taken by each call of `run(batch)`, called for about `seconds` (5 at least)."""
    for _ in range(warmup):
        run(batch)
    latencies = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(latencies) < 5:
        call = time.perf_counter()
        run(batch)
        latencies.append(time.perf_counter() - call)
    return np.asarray(latencies)


def synthetic_photo() -> np.ndarray:
    """A 640x480 RGB test card, gradients and shapes: a photo-like input when none is given."""
    import cv2

    y, x = np.mgrid[0:480, 0:640]
    card = np.dstack([x * 255 // 639, y * 255 // 479, (x + y) * 255 // 1118]).astype(np.uint8)
    cv2.circle(card, (320, 240), 120, (240, 200, 40), -1)
    cv2.rectangle(card, (60, 60), (200, 180), (30, 90, 220), -1)
    return card
