"""`imgcls predict`: top-k labels for image files, folders (and with --ray, any source
imgcls.data.sources lists); a table per image, a JSON array, or a .jsonl stream."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from imgcls.cli.app import EXIT_INPUT_FAILED, EXIT_OK, app
from imgcls.cli.on_ray import RayAddress, imgcls_ray, ray_address, ray_backend, ray_session
from imgcls.cli.options import Backend, BackendOption, Precision, PrecisionOption
from imgcls.cli.output import json_command, print_json, stderr, stdout
from imgcls.data.images import DEFAULT_MAX_PIXELS
from imgcls.data.sources import Entry, expand_inputs
from imgcls.errors import ConfigError
from imgcls.inference.classifier import ImageClassifier
from imgcls.models.registry import DEFAULT_MODEL
from imgcls.progress import ProgressBar
from imgcls.results import ResultsFile, error_fields, recorded_paths


@app.command()
@json_command
def predict(
    inputs: Annotated[
        list[str],
        typer.Argument(
            metavar="INPUT",
            help="Image files or directories (searched recursively); with --ray also globs, "
            ".txt files of paths and URIs (s3://, gs://, ...).",
        ),
    ],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Architecture name or run directory.")
    ] = DEFAULT_MODEL,
    weights: Annotated[
        Path | None, typer.Option(help="Weights file: safetensors, or a state dict (.pth/.bin).")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Predictions per image.")] = 5,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON array.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 8,
    max_pixels: Annotated[
        int, typer.Option(min=1, help="Refuse images with more pixels than this.")
    ] = DEFAULT_MAX_PIXELS,
    backend: BackendOption = Backend.auto,
    precision: PrecisionOption = Precision.auto,
    output: Annotated[
        Path | None,
        typer.Option(
            help="Stream results to this .jsonl file (or .parquet folder); a rerun skips what "
            "it has."
        ),
    ] = None,
    shard: Annotated[
        str | None, typer.Option(help="K/N: only every N-th input from the K-th (0 ≤ K < N).")
    ] = None,
    min_score: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Answer unknown when the top score is below this (replaces a run's own rule).",
        ),
    ] = None,
    coverage: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Add each image's prediction set: the labels that hold the true one with "
            "this probability (a run's conformal calibration).",
        ),
    ] = None,
    answer_confidence: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="A taxonomy's answer: the deepest node at least this probable (default: the "
            "run's, else 0.9).",
        ),
    ] = None,
    ray: RayAddress = None,
) -> None:
    """Classify images: top-k labels and probabilities for each INPUT.

    With --ray, Ray Data's actors classify them, on this machine or a cluster; the
    results are the same."""
    ray = ray_address(ray)
    entries = _entries(inputs, shard, output, ray)
    paths = [entry for entry in entries if isinstance(entry, str)]
    classifier = ImageClassifier(
        model,
        weights=weights,
        batch_size=batch_size,
        max_pixels=max_pixels,
        backend=ray_backend(ray, backend),
        precision=precision.value,
        coverage=coverage,
        answer_confidence=answer_confidence,
    )
    if not json_output:
        stderr.print(f"{classifier.name}: {classifier.runtime.backend}, {classifier.precision}")
    results: list[dict[str, Any]] = []
    with (
        ray_session(ray),
        ResultsFile(output) if output is not None else contextlib.nullcontext() as sink,
        ProgressBar(len(paths), "classifying", enabled=not json_output) as advance,
    ):
        runner = classifier if ray is None else imgcls_ray().RayClassifier(classifier)
        outcomes = runner.classify_paths(paths, top_k=top_k, min_score=min_score)
        for record in _records(entries, outcomes, advance):
            results.append(record)
            if sink is not None:  # as each image is done: a kill loses (almost) none
                sink.write(record)
    failed = sum("error" in r for r in results)
    if json_output:
        print_json(results)
    elif sink is not None:
        stdout.print(f"{len(results)} images → {output} ({failed} failed)")
    else:
        _print_predictions(results)
    raise typer.Exit(EXIT_INPUT_FAILED if failed else EXIT_OK)


def _entries(
    inputs: list[str], shard: str | None, output: Path | None, ray: str | None
) -> list[Entry]:
    """The inputs to classify, in order: this --shard's, less those --output already has."""
    if ray is not None and shard is not None:
        raise ConfigError("--shard and --ray do not go together: Ray shares out the inputs")
    entries = expand_inputs(inputs, sources=ray is not None)
    if shard is not None:
        entries = entries[_parse_shard(shard)]
    if output is not None:
        done = recorded_paths(output)
        entries = [e for e in entries if (e if isinstance(e, str) else e[0]) not in done]
    return entries


def _records(
    entries: list[Entry], outcomes: Iterator[tuple[str, Any]], advance: Callable[[], None]
) -> Iterator[dict[str, Any]]:
    """One record per entry, in input order: its predictions, or its error."""
    for entry in entries:
        if isinstance(entry, tuple):  # an input with nothing to classify
            yield _error_record(*entry)
            continue
        path, outcome = next(outcomes)
        advance()
        if isinstance(outcome, Exception):
            yield _error_record(path, outcome)
        else:
            yield {"path": path, **outcome.to_dict()}


def _parse_shard(shard: str) -> slice:
    """ "K/N" → the slice of inputs shard K of N takes (every N-th, from the K-th)."""
    k, _, n = shard.partition("/")
    if not (k.isdigit() and n.isdigit() and 0 <= int(k) < int(n)):
        raise ConfigError(f"--shard must be K/N with 0 ≤ K < N, got {shard!r}")
    return slice(int(k), None, int(n))


def _set_text(record: dict[str, Any]) -> str:
    labels = record["prediction_set"]
    return "{" + ", ".join(labels) + "}" if labels else "{} (no label is likely enough)"


def _error_record(path: str, exc: Exception) -> dict[str, Any]:
    return {"path": str(path), "error": error_fields(exc)}


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
        table.add_column("", style="green")  # ✓: a label the model asserts
        if record["predictions"] and record["predictions"][0]["unknown"]:
            table.caption = "unknown: not sure enough to name this image"
        beyond = [
            n for n in record["labels"] if n not in {p["label"] for p in record["predictions"]}
        ]
        if beyond:
            table.caption = f"also present: {', '.join(beyond)}"
        if "prediction_set" in record:
            table.caption = "; ".join(
                filter(None, [table.caption, f"prediction set: {_set_text(record)}"])
            )
        for rank, p in enumerate(record["predictions"], 1):
            bar = "█" * max(1, round(p["score"] * 20)) if p["score"] >= 0.025 else ""
            table.add_row(
                str(rank),
                p["label"],
                p["class_id"],
                f"{p['score']:.1%}",
                f"[cyan]{bar}[/cyan]",
                "✓" if p["present"] else "",
            )
        stdout.print(table)
        if record.get("answer"):  # the hierarchical answer, under the leaves it sums
            answer = record["answer"]
            trail = " › ".join(answer["path"][-4:])
            stdout.print(
                f"answer: [bold]{answer['label']}[/bold] {answer['probability']:.1%} ({trail})"
            )
        stdout.print()
