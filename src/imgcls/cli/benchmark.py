"""`imgcls benchmark`: model-only images/s and latency per backend and batch size."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from imgcls.benchmark import benchmark as run_benchmark
from imgcls.benchmark import synthetic_photo
from imgcls.cli.app import app
from imgcls.cli.options import Backend, Precision, PrecisionOption
from imgcls.cli.output import json_command, print_json, stdout
from imgcls.data.images import load_image
from imgcls.errors import ConfigError, ImageError
from imgcls.inference.classifier import ImageClassifier


@app.command()
@json_command
def benchmark(
    model: Annotated[
        str, typer.Argument(metavar="MODEL", help="Architecture name, run directory or .onnx.")
    ],
    backend: Annotated[
        list[Backend] | None,
        typer.Option(help="Repeat to compare (default: torch and onnx; auto for bf16, int8)."),
    ] = None,
    batch_size: Annotated[
        list[int] | None, typer.Option(min=1, help="Batch size; repeat for several (default 1, 8).")
    ] = None,
    precision: PrecisionOption = Precision.auto,
    seconds: Annotated[float, typer.Option(min=0.1, help="Seconds per measurement.")] = 5.0,
    image: Annotated[
        Path | None, typer.Option(help="Photo to feed (default: a generated test card).")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Model-only speed: images/s and latency per backend and batch."""
    try:
        photo = load_image(image) if image is not None else synthetic_photo()
    except ImageError as exc:  # a photo to time with, not an input that failed
        raise ConfigError(f"--image: {exc}") from None
    if model.endswith(".onnx"):
        backends = ["onnx"]
    else:
        default = ["torch", "onnx"] if precision.value in ("auto", "fp32") else ["auto"]
        backends = [b.value for b in backend] if backend else default
    results = []
    for name in backends:
        classifier = ImageClassifier(model, backend=name, precision=precision.value)
        for size in batch_size or [1, 8]:
            results.append(run_benchmark(classifier, photo, size, seconds).to_dict())
            if not json_output:
                _print_measurement(results[-1])
    if json_output:
        print_json(results)


def _print_measurement(r: dict[str, Any]) -> None:
    stdout.print(
        f"{r['backend']:>8} {r['precision']} batch {r['batch_size']:>3}: {r['images_per_s']:8.1f} "
        f"images/s  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms"
    )
