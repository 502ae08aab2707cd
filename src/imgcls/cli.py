"""The `imgcls` command line: a thin layer over the functions the Python API uses.

Exit codes: 0 success, 1 some input failed (the rest were still processed), 2 usage error
(including a model or weights file that cannot be loaded).
"""

from __future__ import annotations

import json
import os
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
    stderr.print(f"[red]error:[/red] {message}", highlight=False, markup=True, soft_wrap=True)
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


@app.command()
def train(
    data: Annotated[
        Path, typer.Argument(help="DATA/<class>/* or DATA/train/<class>/* (+ val/, test/).")
    ],
    out: Annotated[Path | None, typer.Option(help="Run directory to write.")] = None,
    model: Annotated[
        str, typer.Option("--model", "-m", help="Architecture name (or simple_cnn).")
    ] = "efficientnet_lite0",
    pretrained: Annotated[bool, typer.Option(help="Start from ImageNet weights.")] = True,
    epochs: Annotated[int, typer.Option(help="Passes over the training set.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Images per step (per process).")] = 32,
    img_size: Annotated[int | None, typer.Option(help="Square input size in pixels.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    weight_decay: Annotated[float, typer.Option(help="Not on norms and biases.")] = 0.05,
    optimizer: Annotated[str, typer.Option(help="adamw | sgd.")] = "adamw",
    warmup_epochs: Annotated[float, typer.Option(help="Linear warm-up before cosine.")] = 1.0,
    label_smoothing: Annotated[float, typer.Option(help="Cross-entropy smoothing.")] = 0.0,
    augment: Annotated[str, typer.Option(help="none | light | strong.")] = "light",
    mixup: Annotated[float, typer.Option(help="MixUp alpha (0: off).")] = 0.0,
    cutmix: Annotated[float, typer.Option(help="CutMix alpha (0: off).")] = 0.0,
    freeze_backbone: Annotated[bool, typer.Option(help="Train only the classifier head.")] = False,
    balance: Annotated[bool, typer.Option(help="Weight the loss by 1 / class frequency.")] = False,
    clip_grad: Annotated[float | None, typer.Option(help="Max gradient norm.")] = None,
    patience: Annotated[int | None, typer.Option(help="Early stopping patience (epochs).")] = None,
    val_split: Annotated[float, typer.Option(help="Held-out fraction without DATA/val.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    amp: Annotated[bool, typer.Option(help="Autocast: bf16 on CPU, fp16 on CUDA.")] = False,
    channels_last: Annotated[bool, typer.Option(help="NHWC memory format.")] = False,
    ema: Annotated[bool, typer.Option(help="Keep an EMA of the weights.")] = False,
    ema_decay: Annotated[float, typer.Option(help="EMA decay per step.")] = 0.999,
    workers: Annotated[int | None, typer.Option(help="Data loader processes.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ...")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out.")] = False,
    find_lr: Annotated[bool, typer.Option(help="Run an LR range test instead.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print a final JSON object.")] = False,
) -> None:
    """Train a classifier on folders of images; write a run directory usable as --model."""
    from imgcls.checkpoint import WeightsError
    from imgcls.data import DataError
    from imgcls.models import ModelError
    from imgcls.train import ConfigError, TrainConfig
    from imgcls.train import find_lr as run_find_lr
    from imgcls.train import train as run_train

    if out is None and not find_lr:
        _fail_usage("--out RUN is required: the run directory to write")
    # Every option named like a TrainConfig field goes straight into it.
    options = {k: v for k, v in locals().items() if k in TrainConfig.__dataclass_fields__}
    options.update(data=str(data), out=str(out or "."), progress=not json_output)
    if workers is None:
        del options["workers"]
    config = TrainConfig(**options)
    try:
        result = run_find_lr(config) if find_lr else run_train(config)
    except (ConfigError, DataError, ModelError, WeightsError, FileNotFoundError) as exc:
        _fail_usage(str(exc))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return
    if find_lr:
        summary = {"suggested_lr": result.suggested_lr, "plot": result.plot}
        if json_output:
            print(json.dumps(summary, indent=2))
        else:
            stdout.print(f"suggested learning rate: {result.suggested_lr:.2e} ({result.plot})")
        return
    if json_output:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        best = result.best_val_accuracy
        stdout.print(
            f"trained {result.epochs} epoch(s) in {result.seconds:.0f}s; best val accuracy "
            f"{'n/a' if best is None else f'{best:.4f}'} (epoch {result.best_epoch}); "
            f"run directory {result.run_dir}"
        )


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        stderr.print("interrupted")
        sys.exit(130)
