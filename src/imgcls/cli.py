"""The `imgcls` command line: each command parses its arguments, calls the function the
Python API offers for the job and prints the result.

Exit codes: 0 success; 1 some input failed (the rest were still processed) or an output
could not be written; 2 usage error (including a model or weights file that cannot be
loaded). Every error a command raises ends in one place, `_Commands.invoke`: one line on
stderr and its exit code (`_exit_code`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from typer.core import TyperGroup

from imgcls.calibration import REJECT_SCORES
from imgcls.classifier import BACKENDS
from imgcls.errors import ConfigError, ImageError, ImgclsError, QuantizationError, WriteError
from imgcls.export import EXPORT_FORMATS
from imgcls.feedback import (
    DEFAULT_FEEDBACK_DIR,
    DEFAULT_FEEDBACK_MAX_MB,
    DEFAULT_LOG_DB,
    DEFAULT_LOG_MAX_ROWS,
)
from imgcls.images import DEFAULT_MAX_PIXELS, list_images
from imgcls.models import DEFAULT_MODEL
from imgcls.results import ResultsFile, error_fields, recorded_paths
from imgcls.train_config import CLASSIFIERS, OPTIMIZERS, TrainConfig
from imgcls.transforms import AUGMENT_PRESETS

EXIT_OK, EXIT_INPUT_FAILED, EXIT_USAGE = 0, 1, 2

stdout = Console()
stderr = Console(stderr=True)


# -- errors: one line on stderr and an exit code, decided here for every command ----------

# The first class an error is an instance of decides its exit code; an error of none of
# them is a bug, and keeps its traceback.
_EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (WriteError, EXIT_INPUT_FAILED),  # an output not written: disk full, no permission
    (ImageError, EXIT_INPUT_FAILED),  # the image a command was given does not decode
    (QuantizationError, EXIT_INPUT_FAILED),  # an int8 model its calibration images refuse
    (ImgclsError, EXIT_USAGE),  # a model, weights, data set or arguments that cannot work
    (FileNotFoundError, EXIT_USAGE),  # a model, weights or data path that is not there
    (FileExistsError, EXIT_USAGE),  # an output folder that must be new
    (OSError, EXIT_INPUT_FAILED),  # anything else the system refused
)
# The library names a function's parameters; here they are flags, under these names when
# not the parameter's with dashes.
_FLAGS = {"data": "DATA", "calibration": "--calib", "api_keys": "--api-key", "address": "--ray"}


class _Commands(TyperGroup):
    """The `imgcls` command group: where every command's errors end (see the module)."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _ray_default(args))

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:  # the commands run, and their options are parsed, in here
            code = _exit_code(exc)
            if code is None:
                raise
            stderr.print(
                f"[red]error:[/red] {escape(_message(exc))}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(code) from None


def _ray_default(args: list[str]) -> list[str]:
    """`--ray` with no ADDRESS after it means `--ray local` (typer has no options whose
    value is optional)."""
    args = list(args)
    for i in reversed(range(len(args))):
        if args[i] == "--ray" and (i + 1 == len(args) or args[i + 1].startswith("-")):
            args.insert(i + 1, "local")
    return args


def _exit_code(exc: Exception) -> int | None:
    """How an error ends a command (None: it is not one for a one-line message)."""
    if _is_usage_error(exc):
        return exc.exit_code
    if isinstance(exc, BrokenPipeError):  # stdout piped into `head`: click ends it quietly
        return None
    return next((code for kind, code in _EXIT_CODES if isinstance(exc, kind)), None)


def _is_usage_error(exc: Exception) -> bool:
    """click's own errors (a bad option value, a missing argument) carry their message and
    exit code; whichever click typer brings, they are known by those. Not the help that a
    bare command group shows (click >= 8.2 raises it as an error)."""
    return hasattr(exc, "format_message") and type(exc).__name__ != "NoArgsIsHelpError"


def _message(exc: Exception) -> str:
    """An error's message as a command line user reads it: flags for parameters."""
    if _is_usage_error(exc):
        message = exc.format_message().replace("Value error, ", "")  # pydantic's, in typer 0.29
        ctx = getattr(exc, "ctx", None)
        return f"{message} (see {ctx.command_path} --help)" if ctx is not None else message
    message = str(exc)
    for name in getattr(exc, "parameters", ()):
        message = message.replace(f"`{name}`", _FLAGS.get(name, "--" + name.replace("_", "-")))
    return message


# -- the choices of options: typer lists them in --help and refuses others ----------------


def _choices(name: str, values: Sequence[str]) -> type[StrEnum]:
    return StrEnum(name, [(value, value) for value in values])


Backend = _choices("Backend", BACKENDS)
ExportFormat = _choices("ExportFormat", EXPORT_FORMATS)
Optimizer = _choices("Optimizer", OPTIMIZERS)
Augment = _choices("Augment", AUGMENT_PRESETS)
Classifier = _choices("Classifier", CLASSIFIERS)
RejectScore = _choices("RejectScore", REJECT_SCORES)


# Reading a label file, the same options wherever DATA may be one.
LabelDelim = Annotated[
    str | None,
    typer.Option(help="Label file: what separates several labels in a cell (default: spaces)."),
]
SkipMissing = Annotated[
    bool, typer.Option(help="Label file: skip (and count) rows whose image file is missing.")
]


app = typer.Typer(
    name="imgcls",
    cls=_Commands,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # click's plain help: it reads well in 80 columns
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Image classification: predict, train, evaluate, serve, export."""


# -- --json: stdout carries the JSON document alone ---------------------------------------

# The documents a running --json command has handed to `_print_json`.
_json_documents: ContextVar[list[Any] | None] = ContextVar("json_documents", default=None)


def _json_command(command: Callable[..., None]) -> Callable[..., None]:
    """For a command with `--json` (its `json_output` parameter): stdout carries the JSON
    document alone. While the command works, anything else written to stdout, by Python
    or by C/C++ libraries on file descriptor 1 (torch's ONNX exporter prints a graph there
    when an export fails), is held back and counted in one line on stderr; the document
    given to `_print_json` is printed once stdout is restored."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        if not kwargs.get("json_output"):
            return command(*args, **kwargs)
        documents: list[Any] = []
        token = _json_documents.set(documents)
        try:
            with _stdout_held_back():
                command(*args, **kwargs)
        finally:  # typer.Exit carries the exit code of a command that has its document
            _json_documents.reset(token)
            for document in documents:
                _print_json(document)

    return run


def _print_json(document: Any) -> None:
    """Print a --json command's document; in a `_json_command`, once stdout is restored."""
    documents = _json_documents.get()
    if documents is None:
        print(json.dumps(document, ensure_ascii=False, indent=2))
    else:
        documents.append(document)


@contextlib.contextmanager
def _stdout_held_back() -> Iterator[None]:
    """Send `sys.stdout` and file descriptor 1 to a temporary file for the block; then
    restore both and say on stderr how many lines were held back. (Under typer's
    CliRunner `sys.stdout` is a buffer, not fd 1: both are held all the same.)"""
    python_stdout = sys.stdout
    python_stdout.flush()
    _flush_c_stdio()
    with tempfile.TemporaryFile() as held:
        try:
            saved_fd = os.dup(1)
        except OSError:  # no fd 1 to hold back
            saved_fd = None
        else:
            os.dup2(held.fileno(), 1)
        held_stream = open(held.fileno(), "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stdout = held_stream
        try:
            yield
        finally:
            held_stream.close()
            python_stdout.flush()  # what a library wrote to the stream it kept
            _flush_c_stdio()
            sys.stdout = python_stdout
            if saved_fd is not None:
                os.dup2(saved_fd, 1)
                os.close(saved_fd)
            held.seek(0)
            lines = len(held.read().splitlines())
            if lines:
                stderr.print(
                    f"note: a library printed {lines} line{'s' if lines > 1 else ''} to "
                    "stdout; not shown with --json",
                    highlight=False,
                    markup=False,
                    soft_wrap=True,
                )


def _flush_c_stdio() -> None:
    """Flush C's stdio buffers (printf, std::cout): to a pipe they are written only when
    full or at exit, after the block that should have held them back."""
    with contextlib.suppress(OSError, AttributeError, TypeError):  # no C library (Windows)
        ctypes.CDLL(None).fflush(None)


class _progress:
    """A progress bar on stderr for work longer than a glance; silent when not a terminal."""

    def __init__(self, total: int, description: str, enabled: bool = True) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=stderr,
            transient=True,
            disable=not (enabled and stderr.is_terminal),
        )
        self.task = self.bar.add_task(description, total=total)

    def __enter__(self):
        self.bar.start()
        return lambda n=1: self.bar.advance(self.task, n)

    def __exit__(self, *exc_info) -> None:
        self.bar.stop()

    def set_total(self, total: int) -> None:
        self.bar.update(self.task, total=total)


# -- --ray: predict, features and evaluate on Ray Data -------------------------------------

RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="[ADDRESS]",
        help="Run on Ray Data: a local Ray on this machine's cores, or the cluster at "
        "ADDRESS (auto, HOST:6379, ray://HOST:10001). See docs/scale.md.",
    ),
]
_ADDRESS = re.compile(r"(local|auto|ray://\S+|[\w.-]+:\d+)")


def _ray_address(address: str | None) -> str | None:
    """--ray's ADDRESS, checked before anything is loaded (None: no --ray)."""
    if address is not None and not _ADDRESS.fullmatch(address):
        raise ConfigError(
            f"--ray {address!r} is not a Ray address (auto, HOST:6379, ray://HOST:10001); "
            "to start a local Ray, put --ray after the inputs or write --ray local"
        )
    if address is not None:
        _imgcls_ray()  # installed?
    return address


def _ray_session(address: str | None) -> contextlib.AbstractContextManager:
    """Ray for one command (imgcls.ray.session), or nothing without --ray."""
    return contextlib.nullcontext() if address is None else _imgcls_ray().session(address)


def _imgcls_ray():
    """imgcls.ray, or a usage error that says how to install Ray."""
    try:
        import imgcls.ray
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] not in ("ray", "pyarrow"):
            raise
        raise ConfigError("--ray needs Ray: pip install 'imgcls[ray]'") from None
    return imgcls.ray


def _ray_backend(address: str | None, backend: Enum) -> str:
    """The backend a command runs: --ray ships an ONNX Runtime export to its actors."""
    if address is None:
        return backend.value
    if backend.value == "torch":
        raise ConfigError("--ray runs ONNX Runtime exports; --backend torch does not go with it")
    return "onnx"


# -- predict ------------------------------------------------------------------------------


@app.command()
@_json_command
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
    backend: Annotated[
        Backend, typer.Option(help="auto: ONNX Runtime on the CPU, PyTorch elsewhere.")
    ] = Backend.auto,
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
    ray: RayAddress = None,
) -> None:
    """Classify images: top-k labels and probabilities for each INPUT.

    With --ray, Ray Data's actors classify them, on this machine or a cluster; the
    results are the same."""
    from imgcls.classifier import ImageClassifier

    ray = _ray_address(ray)
    if ray is not None and shard is not None:
        raise ConfigError("--shard and --ray do not go together: Ray shares out the inputs")
    entries = _expand_inputs(inputs, sources=ray is not None)
    if shard is not None:
        entries = entries[_parse_shard(shard)]
    if output is not None:
        done = recorded_paths(output)
        entries = [e for e in entries if (e if isinstance(e, str) else e[0]) not in done]
    paths = [entry for entry in entries if isinstance(entry, str)]
    classifier = ImageClassifier(
        model,
        weights=weights,
        batch_size=batch_size,
        max_pixels=max_pixels,
        backend=_ray_backend(ray, backend),
    )

    results: list[dict[str, Any]] = []
    with (
        _ray_session(ray),
        ResultsFile(output) if output is not None else contextlib.nullcontext() as sink,
        _progress(len(paths), "classifying", enabled=not json_output) as advance,
    ):
        runner = classifier if ray is None else _imgcls_ray().RayClassifier(classifier)
        outcomes = runner.classify_paths(paths, top_k=top_k, min_score=min_score)
        for entry in entries:
            if isinstance(entry, tuple):  # an input with nothing to classify
                record = _error_record(*entry)
            else:
                path, outcome = next(outcomes)
                if isinstance(outcome, Exception):
                    record = _error_record(path, outcome)
                else:
                    record = {"path": path, **outcome.to_dict()}
                advance()
            results.append(record)
            if sink is not None:  # as each image is done: a kill loses (almost) none
                sink.write(record)
    failed = sum("error" in r for r in results)
    if json_output:
        _print_json(results)
    elif sink is not None:
        stdout.print(f"{len(results)} images → {output} ({failed} failed)")
    else:
        _print_predictions(results)
    raise typer.Exit(EXIT_INPUT_FAILED if failed else EXIT_OK)


def _expand_inputs(inputs: list[str], sources: bool = False) -> list[str | tuple[str, Exception]]:
    """Image files from files and directories, in the order given; with `sources` (--ray)
    also from globs, .txt files of paths (one a line, relative to the file's folder) and
    URIs (a file, or the image files under a folder or prefix). An input with nothing to
    classify stays in its place as a (path, error) pair."""
    entries: list[str | tuple[str, Exception]] = []
    for item in inputs:
        path = Path(item)
        if sources and "://" in item:
            try:
                entries.extend(_imgcls_ray().list_uri(item))
            except (OSError, ValueError) as exc:  # pyarrow's errors are of these kinds
                entries.append((item, exc))
        elif path.is_dir():
            found = [str(p) for p in list_images(path)]
            entries.extend(
                found or [(item, FileNotFoundError(f"{item}: no image files in this directory"))]
            )
        elif sources and path.suffix.lower() == ".txt" and path.is_file():
            entries.extend(_listed_paths(path))
        elif sources and any(c in item for c in "*?[") and not path.exists():  # a glob
            matches = sorted(p for p in glob.glob(item, recursive=True) if Path(p).is_file())
            entries.extend(matches or [(item, FileNotFoundError(f"{item}: no file matches"))])
        else:
            entries.append(item)  # a missing file is reported by the classifier, in place
    return entries


def _listed_paths(listing: Path) -> list[str]:
    """The paths or URIs of a text file, one a line (blank lines and # comments skipped);
    relative paths are relative to the file's folder."""
    lines = (line.strip() for line in listing.read_text(encoding="utf-8").splitlines())
    listed = [line for line in lines if line and not line.startswith("#")]
    return [line if "://" in line else str(listing.parent / line) for line in listed]


def _parse_shard(shard: str) -> slice:
    """ "K/N" → the slice of inputs shard K of N takes (every N-th, from the K-th)."""
    k, _, n = shard.partition("/")
    if not (k.isdigit() and n.isdigit() and 0 <= int(k) < int(n)):
        raise ConfigError(f"--shard must be K/N with 0 ≤ K < N, got {shard!r}")
    return slice(int(k), None, int(n))


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
        stdout.print()


# -- evaluate -----------------------------------------------------------------------------


@app.command()
@_json_command
def evaluate(
    model: Annotated[
        str, typer.Argument(metavar="MODEL", help="Architecture name or run directory.")
    ],
    data: Annotated[
        Path,
        typer.Argument(
            metavar="DATA", help="DATA/<split>/<class>/*, DATA/<class>/* or a LABELS.csv/.jsonl."
        ),
    ],
    split: Annotated[
        str, typer.Option(help="Which split folder (or label file split) to evaluate.")
    ] = "test",
    compare: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Another model to compare (repeatable)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write metrics.json, predictions.csv and plots here.")
    ] = None,
    weights: Annotated[Path | None, typer.Option(help="Weights file for MODEL.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 8,
    backend: Annotated[
        Backend, typer.Option(help="auto: ONNX Runtime on the CPU, PyTorch elsewhere.")
    ] = Backend.auto,
    label_delim: LabelDelim = None,
    skip_missing: SkipMissing = False,
    ray: RayAddress = None,
) -> None:
    """Accuracy, per-class metrics and calibration of MODEL on DATA.

    With --out, also the confusion matrix, the most confident mistakes and calibration
    plots. A multi-label model: mAP, micro/macro F1, subset accuracy, Hamming loss, and
    with --out precision-recall curves and its most confident false positives/negatives.
    With --ray, Ray Data's actors run the model; the metrics are the same."""
    from imgcls.classifier import ImageClassifier
    from imgcls.evaluate import evaluate, read_split, write_report

    ray = _ray_address(ray)
    samples, skipped = read_split(data, split, label_delim=label_delim, skip_missing=skip_missing)
    names = [model, *(compare or [])]
    reports = []
    with _ray_session(ray):
        for name in names:
            classifier = ImageClassifier(
                name,
                weights=weights if name == model else None,
                batch_size=batch_size,
                backend=_ray_backend(ray, backend),
            )
            scored = None
            if ray is not None:
                runner = _imgcls_ray().RayClassifier(classifier)
                scored = runner.scored_paths([str(path) for path, _ in samples])
            bar = _progress(len(samples), f"evaluating {name}", enabled=not json_output)
            with bar as advance:
                evaluation = evaluate(
                    classifier, samples, progress=advance, skipped=skipped, scored=scored
                )
            metrics = evaluation.metrics()
            if out is not None:
                report_dir = out if len(names) == 1 else out / _safe_name(name)
                write_report(evaluation, metrics, report_dir)
            reports.append(metrics)

    if json_output:
        _print_json(reports[0] if len(reports) == 1 else reports)
    else:
        _print_evaluations(reports)
    raise typer.Exit(EXIT_INPUT_FAILED if any(r["failed"] for r in reports) else EXIT_OK)


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.strip("/"))


def _print_evaluations(reports: list[dict[str, Any]]) -> None:
    multi = [r for r in reports if r.get("multi_label")]
    if multi:
        _print_multilabel(multi)
    single = [r for r in reports if not r.get("multi_label")]
    if single:
        _print_single_label(single)
    for r in reports:
        for failure in r["failed"]:
            stderr.print(f"[red]✗[/red] {failure['error']}", highlight=False)
        if r["skipped"]:
            stderr.print(f"skipped {len(r['skipped'])} row(s) whose file is missing")


def _print_multilabel(reports: list[dict[str, Any]]) -> None:
    table = Table(title="evaluation (multi-label)", title_justify="left")
    columns = ("model", "images", "mAP", "micro F1", "macro F1", "subset acc.", "Hamming")
    for column in (*columns, "images/s"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in reports:
        table.add_row(
            r["model"],
            str(r["num_images"]),
            *(f"{r[k]:.3f}" for k in ("mAP", "micro_f1", "macro_f1", "subset_accuracy")),
            f"{r['hamming_loss']:.4f}",
            f"{r['images_per_s']:.1f}",
        )
    stdout.print(table)
    if len(reports) == 1:
        per_class = Table(title="per class", title_justify="left")
        for column in ("class", "precision", "recall", "F1", "AP", "support", "threshold"):
            per_class.add_column(column, justify="left" if column == "class" else "right")
        for name, m in reports[0]["per_class"].items():
            per_class.add_row(
                name,
                *(f"{m[k]:.3f}" for k in ("precision", "recall", "f1")),
                "-" if m["ap"] is None else f"{m['ap']:.3f}",
                str(m["support"]),
                f"{m['threshold']:.3f}",
            )
        stdout.print(per_class)


def _print_single_label(reports: list[dict[str, Any]]) -> None:
    table = Table(title="evaluation", title_justify="left")
    for column in ("model", "images", "accuracy", "top-5", "macro F1", "ECE", "images/s"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in reports:
        top5 = f"{r['top5_accuracy']:.1%}" if "top5_accuracy" in r else "-"
        table.add_row(
            r["model"],
            str(r["num_images"]),
            f"{r['accuracy']:.1%}",
            top5,
            f"{r['macro_f1']:.3f}",
            f"{r['expected_calibration_error']:.3f}",
            f"{r['images_per_s']:.1f}",
        )
    stdout.print(table)
    if len(reports) == 1:
        per_class = Table(title="per class", title_justify="left")
        for column in ("class", "precision", "recall", "F1", "support"):
            per_class.add_column(column, justify="left" if column == "class" else "right")
        for name, m in reports[0]["per_class"].items():
            per_class.add_row(
                name,
                f"{m['precision']:.3f}",
                f"{m['recall']:.3f}",
                f"{m['f1']:.3f}",
                str(m["support"]),
            )
        stdout.print(per_class)
        _print_trust(reports[0])


def _print_trust(report: dict[str, Any]) -> None:
    """Calibration, the run's "unknown" rule, and the coverage / accuracy trade-off."""
    stdout.print(
        f"calibration: temperature {report['temperature']:.3f}, ECE "
        f"{report['ece_uncalibrated']:.3f} before → {report['ece']:.3f} after"
    )
    if "reject" in report:
        rule = report["reject"]
        answered = rule["accuracy_answered"]
        stdout.print(
            f"unknown rule ({rule['score']} < {rule['threshold']:.4f}): "
            f"{rule['unknown_rate']:.1%} unknown, accuracy on the rest "
            f"{'-' if answered is None else f'{answered:.1%}'}"
        )
    table = Table(title="operating points (--min-score)", title_justify="left")
    for column in ("min score", "coverage", "accuracy", "answered"):
        table.add_column(column, justify="right")
    for point in report["operating_points"]:
        accuracy = point["accuracy"]
        table.add_row(
            f"{point['threshold']:g}",
            f"{point['coverage']:.1%}",
            "-" if accuracy is None else f"{accuracy:.1%}",
            str(point["answered"]),
        )
    stdout.print(table)


# -- features -----------------------------------------------------------------------------


@app.command()
def features(
    data: Annotated[
        str,
        typer.Argument(
            metavar="DATA",
            help="A folder of images (class folders give labels), or a LABELS.csv/.jsonl; "
            "with --ray also a glob, a .txt file of paths or a URI.",
        ),
    ],
    out: Annotated[Path, typer.Option(help="The .npz or .parquet file to write.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Backbone name or run directory.")
    ] = DEFAULT_MODEL,
    weights: Annotated[Path | None, typer.Option(help="Weights file for the model.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 8,
    label_delim: LabelDelim = None,
    skip_missing: SkipMissing = False,
    ray: RayAddress = None,
) -> None:
    """Embeddings of every image under DATA, written to a file.

    DATA is a folder (searched recursively) or a label file. An .npz file holds `paths`,
    `labels` (each image's folder within DATA, "" for one directly in DATA; or a label
    file's labels, several joined by the label delimiter) and `features` (N x D float32,
    the pooled penultimate features); in Parquet, one row per image with columns `path`,
    `label` and `features`."""
    from imgcls.features import extract_features

    ray = _ray_address(ray)
    bar = _progress(0, "extracting features")
    with bar as advance:
        if ray is None:
            found = extract_features(
                data,
                model,
                weights,
                batch_size,
                progress=advance,
                on_total=bar.set_total,
                label_delim=label_delim,
                skip_missing=skip_missing,
            )
        else:
            found = _features_on_ray(data, model, weights, batch_size, ray, advance, bar)
    for failure in found.failures:
        stderr.print(f"[red]✗[/red] {escape(str(failure))}", highlight=False)
    if found.skipped:
        stderr.print(f"skipped {len(found.skipped)} row(s) whose file is missing")
    written = found.save(out)
    width = found.vectors.shape[1] if len(found.vectors) else 0
    stdout.print(f"{len(found.paths)} images → {written} ({width} features each)")
    raise typer.Exit(EXIT_INPUT_FAILED if found.failures else EXIT_OK)


def _features_on_ray(
    data: str,
    model: str,
    weights: Path | None,
    batch_size: int,
    address: str,
    advance: Callable[[int], None],
    bar: _progress,
):
    """`features --ray`: the files of DATA (any source --ray takes) through Ray's actors."""
    from imgcls.classifier import ImageClassifier
    from imgcls.errors import DataError
    from imgcls.features import collect_features

    entries = _expand_inputs([data], sources=True)
    paths = [entry for entry in entries if isinstance(entry, str)]
    if not paths:  # one DATA, and nothing in it
        raise DataError(str(entries[0][1]))
    bar.set_total(len(paths))
    classifier = ImageClassifier(model, weights=weights, batch_size=batch_size, backend="onnx")
    with _ray_session(address):
        outcomes = _imgcls_ray().RayClassifier(classifier).features_paths(paths)
        return collect_features(data, outcomes, advance)


# -- export -------------------------------------------------------------------------------


@app.command()
@_json_command
def export(
    model: Annotated[
        str, typer.Argument(metavar="MODEL", help="Architecture name or run directory.")
    ],
    out: Annotated[Path, typer.Option(help="The file to write (.onnx, or .pt for torchscript).")],
    export_format: Annotated[
        ExportFormat, typer.Option("--format", help="The file's format.")
    ] = ExportFormat.onnx,
    weights: Annotated[Path | None, typer.Option(help="Weights file for MODEL.")] = None,
    images: Annotated[
        Path | None, typer.Option(help="Images to check PyTorch/ONNX parity on.")
    ] = None,
    int8: Annotated[
        bool, typer.Option("--int8", help="Static int8 quantization (ONNX), needs --calib.")
    ] = False,
    calib: Annotated[
        Path | None, typer.Option(help="Real images to calibrate int8 ranges on (100-500).")
    ] = None,
    min_agreement: Annotated[
        float,
        typer.Option(min=0, max=1, help="Refuse an int8 model agreeing less with fp32 (top-1)."),
    ] = 0.97,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Export to ONNX or TorchScript, checked against PyTorch.

    ONNX files have a dynamic batch axis and carry labels and preprocessing in their
    metadata. The check reports the max abs difference of probabilities and the top-1
    agreement. `--int8 --calib DIR` quantizes the ONNX file and reports its agreement
    with fp32 and its speed-up."""
    from imgcls.export import export_model

    report = export_model(
        model,
        out,
        export_format.value,
        weights=weights,
        images=images,
        int8=int8,
        calibration=calib,
        min_agreement=min_agreement,
    )
    if json_output:
        _print_json(report)
        return
    stdout.print(
        f"wrote {out}: max abs diff of probabilities {report['max_abs_diff']:.2e}, "
        f"top-1 agreement {report['top1_agreement']:.0%} on {report['checked_on']} inputs"
    )
    if int8:
        q = report["int8"]
        stdout.print(
            f"int8: top-1 agreement with fp32 {q['top1_agreement']:.1%} on {q['checked_on']} "
            f"images, {q['speedup']:.2f}x fp32 speed ({q['images_per_s']:.1f} vs "
            f"{q['fp32_images_per_s']:.1f} images/s at batch 8)"
        )


# -- benchmark ----------------------------------------------------------------------------


@app.command()
@_json_command
def benchmark(
    model: Annotated[
        str, typer.Argument(metavar="MODEL", help="Architecture name, run directory or .onnx.")
    ],
    backend: Annotated[
        list[Backend] | None, typer.Option(help="Repeat to compare (default: torch and onnx).")
    ] = None,
    batch_size: Annotated[
        list[int] | None, typer.Option(min=1, help="Batch size; repeat for several (default 1, 8).")
    ] = None,
    seconds: Annotated[float, typer.Option(min=0.1, help="Seconds per measurement.")] = 5.0,
    image: Annotated[
        Path | None, typer.Option(help="Photo to feed (default: a generated test card).")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Model-only speed: images/s and latency per backend and batch."""
    from imgcls.benchmark import benchmark as run_benchmark
    from imgcls.benchmark import synthetic_photo
    from imgcls.classifier import ImageClassifier
    from imgcls.images import load_image

    try:
        photo = load_image(image) if image is not None else synthetic_photo()
    except ImageError as exc:  # a photo to time with, not an input that failed
        raise ConfigError(f"--image: {exc}") from None
    if model.endswith(".onnx"):
        backends = ["onnx"]
    else:
        backends = [b.value for b in backend] if backend else ["torch", "onnx"]
    results = []
    for name in backends:
        classifier = ImageClassifier(model, backend=name)
        for size in batch_size or [1, 8]:
            results.append(run_benchmark(classifier, photo, size, seconds).to_dict())
            if not json_output:
                r = results[-1]
                stdout.print(
                    f"{r['backend']:>5} batch {r['batch_size']:>3}: {r['images_per_s']:8.1f} "
                    f"images/s  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms"
                )
    if json_output:
        _print_json(results)


# -- serve --------------------------------------------------------------------------------


@app.command()
def serve(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Model name or run directory; repeat to serve several (the first is the default).",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to bind (0: a free one, named in the log).")
    ] = 8000,
    max_batch: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Images per model call (default: 4 with ONNX Runtime, which runs two calls "
            "at once; 16 with PyTorch).",
        ),
    ] = None,
    max_wait_ms: Annotated[
        float,
        typer.Option(
            min=0,
            help="How long a batch waits to fill, in milliseconds (default: not at all; "
            "batches form while the model runs).",
        ),
    ] = 0.0,
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
        int | None,
        typer.Option(
            min=1,
            help="Threads per model call (default: all cores; one less for torch).",
        ),
    ] = None,
    backend: Annotated[
        Backend, typer.Option(help="auto: ONNX Runtime on the CPU, PyTorch elsewhere.")
    ] = Backend.auto,
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            "--api-key",
            metavar="KEY",
            envvar="IMGCLS_API_KEY",
            help="Require this key (Authorization: Bearer KEY or X-API-Key: KEY) on every "
            "endpoint but /healthz, /v2/health/* and /metrics; repeat for several (in the "
            "variable: separated by spaces). Default: none on loopback, else a generated one.",
        ),
    ] = None,
    api_key_file: Annotated[
        Path | None, typer.Option(help="File of API keys, one per line ('#' comments).")
    ] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Require no key, even when bound off loopback.")
    ] = False,
    metrics_auth: Annotated[
        bool, typer.Option("--metrics-auth", help="Require the key on /metrics too.")
    ] = False,
    log_db: Annotated[
        Path, typer.Option(help="SQLite file that logs every prediction (WAL mode).")
    ] = Path(DEFAULT_LOG_DB),
    no_log: Annotated[bool, typer.Option("--no-log", help="Do not log predictions.")] = False,
    log_max_rows: Annotated[
        int, typer.Option(min=1, help="Keep at most this many predictions; the oldest go.")
    ] = DEFAULT_LOG_MAX_ROWS,
    log_max_days: Annotated[
        float | None, typer.Option(help="Delete predictions older than this many days.")
    ] = None,
    feedback_dir: Annotated[
        Path, typer.Option(help="Where corrected images are kept, in class folders.")
    ] = Path(DEFAULT_FEEDBACK_DIR),
    feedback_max_mb: Annotated[
        float,
        typer.Option(help="Refuse corrections (507) once their images take this many MB."),
    ] = DEFAULT_FEEDBACK_MAX_MB,
) -> None:
    """Serve models over HTTP: web page, REST, KServe v2, metrics."""
    from imgcls.serve import ServeConfig, run
    from imgcls.serve.auth import read_key_file

    keys = (*(api_key or ()), *(read_key_file(api_key_file) if api_key_file else ()))
    run(
        ServeConfig(
            models=tuple(model or [DEFAULT_MODEL]),
            host=host,
            port=port,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            max_upload_mb=max_upload_mb,
            max_pixels=max_pixels,
            threads=threads,
            backend=backend.value,
            api_keys=keys,
            no_auth=no_auth,
            metrics_auth=metrics_auth,
            log_db=None if no_log else str(log_db),
            log_max_rows=log_max_rows,
            log_max_days=log_max_days,
            feedback_dir=str(feedback_dir),
            feedback_max_mb=feedback_max_mb,
        )
    )


# -- explain ------------------------------------------------------------------------------


@app.command()
@_json_command
def explain(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="The image to explain.")],
    out: Annotated[Path, typer.Option(help="Where to write the image with the heat map (PNG).")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="CNN architecture name or run directory.")
    ] = DEFAULT_MODEL,
    weights: Annotated[Path | None, typer.Option(help="Weights file for MODEL.")] = None,
    label: Annotated[
        str | None,
        typer.Option("--class", help="Class to explain (label, id or index); default: top-1."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Grad-CAM: a heat map of what made MODEL choose a class."""
    import cv2

    from imgcls.checkpoint import atomic_write, make_dir
    from imgcls.explain import Explainer

    if not image.is_file():  # before the model load: a typo costs no wait
        raise ImageError(f"{image}: no such file")
    explanation = Explainer(model, weights=weights).explain(image, label)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".bmp"):
        out = out.with_suffix(".png")
    ok, encoded = cv2.imencode(out.suffix, cv2.cvtColor(explanation.overlay(), cv2.COLOR_RGB2BGR))
    if not ok:
        raise WriteError(f"{out}: OpenCV could not encode the heat map")
    make_dir(out.parent)
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(encoded.tobytes()))
    prediction = explanation.prediction
    if json_output:
        _print_json({"path": str(image), "out": str(out), **prediction.to_dict()})
    else:
        stdout.print(
            f"{image}: heat map for {prediction.label!r} ({prediction.score:.1%}) → {out}",
            highlight=False,
        )


# -- feedback export ----------------------------------------------------------------------

feedback_app = typer.Typer(
    help="The corrections collected by `imgcls serve`.", no_args_is_help=True
)
app.add_typer(feedback_app, name="feedback")


@feedback_app.command("export")
@_json_command
def feedback_export(
    out: Annotated[
        Path, typer.Argument(metavar="OUT", help="New directory for the data set (<class>/*).")
    ],
    feedback_dir: Annotated[Path, typer.Option(help="The server's --feedback-dir.")] = Path(
        DEFAULT_FEEDBACK_DIR
    ),
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Copy the corrected images into a new data set, OUT/<class>/*.

    `imgcls train` and `imgcls doctor` take it as it is."""
    from imgcls.feedback import export_feedback

    counts = export_feedback(feedback_dir, out)
    if json_output:
        _print_json({"out": str(out), "classes": counts, "num_images": sum(counts.values())})
    else:
        stdout.print(f"{sum(counts.values())} images in {len(counts)} classes → {out}")


# -- train --------------------------------------------------------------------------------


# The defaults of the `train` options are a default TrainConfig's: each is written once.
_TRAIN = TrainConfig(data="DATA", out="RUN")


@app.command()
@_json_command
def train(
    ctx: typer.Context,
    data: Annotated[
        Path,
        typer.Argument(
            metavar="DATA",
            help="DATA/<class>/*, DATA/train/<class>/* (+ val/, test/) or a LABELS.csv/.jsonl.",
        ),
    ],
    out: Annotated[Path | None, typer.Option(help="Run directory to write.")] = None,
    model: Annotated[
        str, typer.Option("--model", "-m", help="Architecture name (or simple_cnn).")
    ] = _TRAIN.model,
    pretrained: Annotated[
        bool, typer.Option(help="Start from ImageNet weights.")
    ] = _TRAIN.pretrained,
    weights: Annotated[
        Path | None, typer.Option(help="Start from this state dict (safetensors or .pth/.bin).")
    ] = _TRAIN.weights,
    epochs: Annotated[int, typer.Option(help="Passes over the training set.")] = _TRAIN.epochs,
    batch_size: Annotated[
        int, typer.Option(help="Images per step, all processes together (torchrun).")
    ] = _TRAIN.batch_size,
    img_size: Annotated[
        int | None, typer.Option(help="Square input size in pixels.")
    ] = _TRAIN.img_size,
    lr: Annotated[
        float | None, typer.Option(help="Peak learning rate (default: 1e-3 adamw, 0.05 sgd).")
    ] = _TRAIN.lr,
    weight_decay: Annotated[
        float, typer.Option(help="Not on norms and biases.")
    ] = _TRAIN.weight_decay,
    optimizer: Annotated[Optimizer, typer.Option(help="The optimizer.")] = _TRAIN.optimizer,
    warmup_epochs: Annotated[
        float, typer.Option(help="Linear warm-up before cosine.")
    ] = _TRAIN.warmup_epochs,
    label_smoothing: Annotated[
        float, typer.Option(help="Cross-entropy smoothing.")
    ] = _TRAIN.label_smoothing,
    augment: Annotated[Augment, typer.Option(help="Augmentation preset.")] = _TRAIN.augment,
    hflip: Annotated[
        bool | None,
        typer.Option(
            "--hflip/--no-hflip", help="Left-right flips (default: where they keep labels)."
        ),
    ] = _TRAIN.hflip,
    mixup: Annotated[float, typer.Option(help="MixUp alpha (0: off).")] = _TRAIN.mixup,
    cutmix: Annotated[float, typer.Option(help="CutMix alpha (0: off).")] = _TRAIN.cutmix,
    freeze_backbone: Annotated[
        bool, typer.Option(help="Train only the classifier head.")
    ] = _TRAIN.freeze_backbone,
    classifier: Annotated[
        Classifier,
        typer.Option(help="softmax: trained end to end; the others fit on frozen features."),
    ] = _TRAIN.classifier,
    balance: Annotated[
        bool, typer.Option(help="Weight the loss by 1 / class frequency.")
    ] = _TRAIN.balance,
    clip_grad: Annotated[float | None, typer.Option(help="Max gradient norm.")] = _TRAIN.clip_grad,
    patience: Annotated[
        int | None, typer.Option(help="Early stopping patience (epochs).")
    ] = _TRAIN.patience,
    val_split: Annotated[
        float, typer.Option(help="Held-out fraction without DATA/val.")
    ] = _TRAIN.val_split,
    label_delim: LabelDelim = _TRAIN.label_delim,
    skip_missing: SkipMissing = _TRAIN.skip_missing,
    multi_label: Annotated[
        bool,
        typer.Option(
            "--multi-label",
            help="Sigmoid outputs and per-class thresholds (automatic when "
            "an image has several labels).",
        ),
    ] = _TRAIN.multi_label,
    seed: Annotated[int, typer.Option(help="Random seed.")] = _TRAIN.seed,
    amp: Annotated[bool, typer.Option(help="Autocast: bf16 on CPU, fp16 on CUDA.")] = _TRAIN.amp,
    channels_last: Annotated[bool, typer.Option(help="NHWC memory format.")] = _TRAIN.channels_last,
    ema: Annotated[bool, typer.Option(help="Keep an EMA of the weights.")] = _TRAIN.ema,
    ema_decay: Annotated[float, typer.Option(help="EMA decay per step.")] = _TRAIN.ema_decay,
    workers: Annotated[int, typer.Option(help="Data loader processes.")] = _TRAIN.workers,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ...")] = _TRAIN.device,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out.")] = _TRAIN.resume,
    reject_score: Annotated[
        RejectScore, typer.Option(help="What the 'unknown' threshold reads.")
    ] = _TRAIN.reject_score,
    target_precision: Annotated[
        float | None,
        typer.Option(help="'unknown' threshold: accuracy wanted on the images answered."),
    ] = _TRAIN.target_precision,
    target_coverage: Annotated[
        float | None,
        typer.Option(help="'unknown' threshold: share of images answered (default 0.95)."),
    ] = _TRAIN.target_coverage,
    find_lr: Annotated[bool, typer.Option(help="Run an LR range test instead.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print a final JSON object.")] = False,
) -> None:
    """Train a classifier on folders of images into a run directory.

    The run directory is accepted as --model by every command."""
    from imgcls.lr_find import find_lr as run_find_lr
    from imgcls.train import train as run_train

    if out is None and not find_lr:
        raise ConfigError("--out RUN is required: the run directory to write")
    # Every option named like a TrainConfig field goes straight into it.
    options = {
        name: value.value if isinstance(value, Enum) else value
        for name, value in ctx.params.items()
        if name in TrainConfig.__dataclass_fields__
    }
    options.update(data=str(data), out=str(out or "."), progress=not json_output)
    options.update(weights=None if weights is None else str(weights))
    result = run_find_lr(TrainConfig(**options)) if find_lr else run_train(TrainConfig(**options))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return
    if find_lr:
        summary = {"suggested_lr": result.suggested_lr, "plot": result.plot}
        if json_output:
            _print_json(summary)
        else:
            stdout.print(f"suggested learning rate: {result.suggested_lr:.2e} ({result.plot})")
        return
    if json_output:
        _print_json(result.to_dict())
    else:
        name, best = "accuracy", result.best_val_accuracy
        if result.multi_label:
            name, best = "mAP", result.best_val_map
        stdout.print(
            f"trained {result.epochs} epoch(s) in {result.seconds:.0f}s; best val {name} "
            f"{'n/a' if best is None else f'{best:.4f}'} (epoch {result.best_epoch}); "
            f"run directory {result.run_dir}"
        )


# -- doctor -------------------------------------------------------------------------------


@app.command()
@_json_command
def doctor(
    data: Annotated[
        Path | None,
        typer.Argument(
            metavar="DATA",
            help="DATA/<class>/*, DATA/train/<class>/* (+ val/, test/) or a LABELS.csv/.jsonl.",
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    out: Annotated[
        Path | None, typer.Option(help="Write report.html (with thumbnails) and report.json.")
    ] = None,
    quarantine: Annotated[
        Path | None,
        typer.Option(help="Move flagged files (corrupt, extra copies) here, with a manifest."),
    ] = None,
    only: Annotated[
        Path | None,
        typer.Option(help="With --quarantine: move exactly the files in this CSV's path column."),
    ] = None,
    restore: Annotated[
        Path | None, typer.Option(help="Move the files of a quarantine manifest back.")
    ] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Threads decoding files.")] = None,
    labels: Annotated[
        bool,
        typer.Option(
            "--labels", help="Instead: likely mislabelled images (k-fold on frozen features)."
        ),
    ] = False,
    top: Annotated[
        int | None, typer.Option(min=1, help="With --labels: report at most this many images.")
    ] = None,
    label_delim: LabelDelim = None,
    skip_missing: SkipMissing = False,
) -> None:
    """Data set health: corrupt files, duplicates, leaks, mislabels.

    Also near-duplicates, split leaks and imbalance; with --labels, instead, the images
    whose label an out-of-fold model finds least likely. Exit code 1 when corrupt files
    or leaks were found, 0 otherwise (warnings included)."""
    from imgcls import doctor as doc

    if restore is not None:
        if data is not None or quarantine is not None or only is not None:
            raise ConfigError("--restore MANIFEST takes no DATA, --quarantine or --only")
        restored, problems = doc.restore(restore)
        _report_moves({"restored": restored, "problems": problems}, json_output, "restored")
        raise typer.Exit(EXIT_INPUT_FAILED if problems else EXIT_OK)
    if data is None:
        raise ConfigError("give DATA to check, or --restore MANIFEST")
    if labels:  # writes label_issues.csv (for --quarantine --only) and .html to --out
        _doctor_labels(data, out, json_output, top, label_delim, skip_missing)
        return
    if only is not None:
        if quarantine is None:
            raise ConfigError("--only FILE.csv needs --quarantine DIR")
        moves = [(p, f"listed in {only}") for p in doc.paths_from_csv(data, only)]
        manifest = doc.quarantine(data, moves, quarantine)
        _report_moves(
            {"quarantined": [p for p, _ in moves], "manifest": str(manifest)},
            json_output,
            "quarantined",
        )
        return
    bar = _progress(0, "checking images", enabled=not json_output)
    with bar as advance:
        report = doc.diagnose(
            data,
            workers=workers,
            progress=advance,
            on_total=bar.set_total,
            label_delim=label_delim,
            skip_missing=skip_missing,
        )
    result = report.to_dict()
    if out is not None:
        result["html_report"] = str(doc.write_html_report(report, out))
    if quarantine is not None:
        moves = report.flagged()
        result["quarantined"] = [p for p, _ in moves]
        result["manifest"] = str(doc.quarantine(data, moves, quarantine))
    if json_output:
        _print_json(result)
    else:
        _print_doctor(result)
    raise typer.Exit(EXIT_INPUT_FAILED if report.corrupt or report.leaks else EXIT_OK)


def _doctor_labels(
    data: Path,
    out: Path | None,
    json_output: bool,
    top: int | None,
    label_delim: str | None,
    skip_missing: bool,
) -> None:
    """`doctor --labels`: rank images by how unlikely an out-of-fold model finds their
    label (imgcls.audit), print the worst, write the CSV and the gallery."""
    from imgcls.audit import audit_labels, write_audit
    from imgcls.data import scan_dataset
    from imgcls.label_files import is_label_file

    if not (data.is_dir() or is_label_file(data)):
        raise ConfigError(f"DATA: no such directory {data} (nor a .csv / .jsonl label file)")
    reading = {"label_delim": label_delim, "skip_missing": skip_missing}
    total = sum(len(files) for files in scan_dataset(data, **reading).splits.values())
    with _progress(total, "extracting features", enabled=not json_output) as advance:
        audit = audit_labels(data, progress=advance, **reading)
    report = audit.to_dict(top)
    if out is not None:
        report["files"] = [str(p) for p in write_audit(audit, out, top)]
    if json_output:
        _print_json(report)
        return
    table = Table(
        title=f"likely mislabelled: {report['num_issues']} of {report['num_images']} images",
        title_justify="left",
    )
    for column in ("path", "given", "suggested", "p(given)", "margin"):
        table.add_column(column, justify="right" if column.startswith(("p(", "m")) else "left")
    for item in report["issues"][: top or 20]:
        table.add_row(
            item["path"],
            item["given_label"],
            item["suggested_label"],
            f"{item['self_confidence']:.3f}",
            f"{item['margin']:+.3f}",
        )
    stdout.print(table)
    for path in report.get("files", []):
        stdout.print(f"wrote {path}")


def _report_moves(result: dict[str, Any], json_output: bool, what: str) -> None:
    if json_output:
        _print_json(result)
        return
    stdout.print(f"{len(result[what])} file(s) {what}", highlight=False)
    if "manifest" in result:
        stdout.print(f"manifest: {result['manifest']} (undo: imgcls doctor --restore it)")
    for problem in result.get("problems", []):
        stderr.print(f"[red]✗[/red] {problem}", highlight=False)


_SHOWN = 10  # paths listed per finding in the human-readable report


def _print_doctor(r: dict[str, Any]) -> None:
    source = r["label_file"] or r["root"]
    counts = Table(title=f"{source}: {r['num_images']} images", title_justify="left")
    splits = list(r["classes"])
    counts.add_column("class")
    for split in splits:
        counts.add_column(split, justify="right")
    for label in sorted({c for by_class in r["classes"].values() for c in by_class}):
        counts.add_row(label, *(str(r["classes"][s].get(label, "-")) for s in splits))
    stdout.print(counts)

    findings = Table(title="findings", title_justify="left", show_lines=True)
    findings.add_column("check")
    findings.add_column("count", justify="right")
    findings.add_column("examples", overflow="fold")

    def examples(paths: list[str]) -> str:
        more = f" … +{len(paths) - _SHOWN}" if len(paths) > _SHOWN else ""
        return ", ".join(paths[:_SHOWN]) + more

    findings.add_row(
        "corrupt",
        str(len(r["corrupt"])),
        "\n".join(f"{path}: {r['corrupt_reasons'][path]}" for path in r["corrupt"][:_SHOWN]),
    )
    for key in ("leaks", "duplicates", "near_duplicates"):
        groups = r[key]
        conflicts = sum(g["cross_class"] for g in groups)
        label = key.replace("_", "-") + (f" ({conflicts} across classes)" if conflicts else "")
        findings.add_row(
            label, str(len(groups)), "\n".join(examples(g["paths"]) for g in groups[:_SHOWN])
        )
    for w in r["warnings"]:
        findings.add_row(
            f"[yellow]{w['kind']}[/yellow]",
            str(len(w["paths"]) or ""),
            w["message"] + ("\n" + examples(w["paths"]) if w["paths"] else ""),
        )
    stdout.print(findings)
    stdout.print(
        f"{r['num_files']} files in {r['seconds']:.1f}s ({r['images_per_s']:.0f} images/s)"
    )
    if "html_report" in r:
        stdout.print(f"report: {r['html_report']}")
    if "manifest" in r:
        stdout.print(
            f"{len(r['quarantined'])} file(s) quarantined; undo: imgcls doctor --restore "
            f"{r['manifest']}"
        )


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        stderr.print("interrupted")
        sys.exit(130)
    except ModuleNotFoundError as exc:  # what `pip install imgcls` leaves out for [train]
        if exc.name is None or exc.name.partition(".")[0] == "imgcls":
            raise  # a bug, not an install
        message = (
            f"this needs {exc.name}, which the inference-only install (predict and serve "
            ".onnx models) leaves out: pip install 'imgcls[train]'"
        )
        stderr.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_USAGE)
