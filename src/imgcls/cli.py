"""The `imgcls` command line: a thin layer over the functions the Python API uses.

Exit codes: 0 success, 1 some input failed (the rest were still processed), 2 usage error
(including a model or weights file that cannot be loaded).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from imgcls.images import DEFAULT_MAX_PIXELS, list_images

app = typer.Typer(
    name="imgcls",
    help="Image classification: predict, train, evaluate, serve, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stdout = Console()
stderr = Console(stderr=True)

EXIT_OK, EXIT_INPUT_FAILED, EXIT_USAGE = 0, 1, 2


@app.callback()
def _root() -> None:
    """Image classification: predict, train, evaluate, serve, export."""


@app.command()
def predict(
    inputs: Annotated[
        list[Path], typer.Argument(metavar="INPUT...", help="Image files or directories (searched recursively).")
    ],
    model: Annotated[str, typer.Option("--model", "-m", help="Architecture name or run directory.")] = "efficientnet_lite0",
    weights: Annotated[
        Path | None, typer.Option(help="Weights file: safetensors, or a state dict (.pth/.bin).")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Predictions per image.")] = 5,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON array.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 32,
    max_pixels: Annotated[
        int, typer.Option(min=1, help="Refuse images with more pixels than this.")
    ] = DEFAULT_MAX_PIXELS,
) -> None:
    """Classify images: top-k labels with probabilities for each INPUT."""
    entries = _expand_inputs(inputs)
    paths = [entry for entry in entries if isinstance(entry, Path)]
    classifier = _load_classifier(model, weights=weights, batch_size=batch_size, max_pixels=max_pixels)

    results: list[dict[str, Any]] = []
    outcomes = classifier.classify_paths(paths, top_k=top_k)
    with _progress(len(paths), "classifying", enabled=not json_output) as advance:
        for entry in entries:
            if isinstance(entry, tuple):  # an input with nothing to classify
                results.append(_error_record(*entry))
                continue
            path, outcome = next(outcomes)
            if isinstance(outcome, Exception):
                results.append(_error_record(path, outcome))
            else:
                results.append({"path": path, "predictions": [p.to_dict() for p in outcome]})
            advance()

    if json_output:
        print(json.dumps(results, ensure_ascii=False, indent=2))
    else:
        _print_predictions(results)
    failed = sum("error" in r for r in results)
    raise typer.Exit(EXIT_INPUT_FAILED if failed else EXIT_OK)


@app.command()
def serve(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", "-m",
            help="Model name or run directory; repeat to serve several (the first is the default).",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to bind.")] = 8000,
    max_batch: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 16,
    max_wait_ms: Annotated[
        float, typer.Option(min=0, help="How long a batch waits to fill, in milliseconds.")
    ] = 5.0,
    max_queue: Annotated[
        int, typer.Option(min=1, help="Images waiting for the model; beyond it requests get 503.")
    ] = 256,
    max_upload_mb: Annotated[
        float, typer.Option(min=0, help="Request body limit in MB; larger uploads get 413.")
    ] = 20.0,
    max_pixels: Annotated[
        int, typer.Option(min=1, help="Refuse images with more pixels than this (422).")
    ] = DEFAULT_MAX_PIXELS,
    threads: Annotated[
        int | None, typer.Option(min=1, help="Threads per model call (default: CPU cores - 1).")
    ] = None,
) -> None:
    """Serve models over HTTP: REST, KServe/Triton v2 and Prometheus metrics."""
    from imgcls.serve import ServeConfig, StartupError, run

    config = ServeConfig(
        models=tuple(model or ["efficientnet_lite0"]), host=host, port=port,
        max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
        max_upload_mb=max_upload_mb, max_pixels=max_pixels, threads=threads,
    )
    try:
        run(config)
    except StartupError as exc:
        _fail_usage(str(exc))


def _expand_inputs(inputs: list[Path]) -> list[Path | tuple[Path, Exception]]:
    """Image files from files and directories, in the order given; an input with nothing
    to classify stays in its place as a (path, error) pair."""
    entries: list[Path | tuple[Path, Exception]] = []
    for item in inputs:
        if item.is_dir():
            found = list_images(item)
            entries.extend(found or [(item, FileNotFoundError(f"{item}: no image files in this directory"))])
        else:
            entries.append(item)  # a missing file is reported by the classifier, in place
    return entries


def _load_classifier(model: str, **kwargs: Any):
    from imgcls.checkpoint import WeightsError
    from imgcls.classifier import ImageClassifier
    from imgcls.models import ModelError

    try:
        return ImageClassifier(model, **kwargs)
    except (ModelError, WeightsError, FileNotFoundError) as exc:
        _fail_usage(str(exc))


def _fail_usage(message: str):
    stderr.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    raise typer.Exit(EXIT_USAGE)


def _error_record(path: Path | str, exc: Exception) -> dict[str, Any]:
    return {"path": str(path), "error": {"type": type(exc).__name__, "message": str(exc)}}


class _progress:
    """A progress bar on stderr for work longer than a glance; silent when not a terminal."""

    def __init__(self, total: int, description: str, enabled: bool = True) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), console=stderr, transient=True,
            disable=not (enabled and stderr.is_terminal),
        )
        self.task = self.bar.add_task(description, total=total)

    def __enter__(self):
        self.bar.start()
        return lambda n=1: self.bar.advance(self.task, n)

    def __exit__(self, *exc_info) -> None:
        self.bar.stop()


def _print_predictions(results: list[dict[str, Any]]) -> None:
    for record in results:
        if "error" in record:
            stderr.print(f"[red]✗[/red] {record['error']['message']}", highlight=False)
            continue
        table = Table(title=record["path"], title_justify="left", show_edge=False, pad_edge=False)
        table.add_column("#", justify="right", style="dim")
        table.add_column("label")
        table.add_column("class id", style="dim")
        table.add_column("score", justify="right")
        table.add_column("")
        for rank, p in enumerate(record["predictions"], 1):
            bar = "█" * max(1, round(p["score"] * 20)) if p["score"] >= 0.025 else ""
            table.add_row(str(rank), p["label"], p["class_id"], f"{p['score']:.1%}", f"[cyan]{bar}[/cyan]")
        stdout.print(table)
        stdout.print()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        stderr.print("interrupted")
        sys.exit(130)
