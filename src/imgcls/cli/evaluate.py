"""`imgcls evaluate`: accuracy, per-class metrics and calibration of one or more models on
a data set; a table (with the trust report) or JSON, and plots with --out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from imgcls.cli.app import EXIT_INPUT_FAILED, EXIT_OK, app
from imgcls.cli.on_ray import RayAddress, imgcls_ray, ray_address, ray_backend, ray_session
from imgcls.cli.options import (
    Backend,
    BackendOption,
    LabelDelim,
    Precision,
    PrecisionOption,
    SkipMissing,
)
from imgcls.cli.output import json_command, print_json, stderr, stdout
from imgcls.files import safe_filename
from imgcls.inference.classifier import ImageClassifier
from imgcls.models.run_dir import is_run_dir, read_run_config
from imgcls.progress import ProgressBar


@app.command()
@json_command
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
    backend: BackendOption = Backend.auto,
    precision: PrecisionOption = Precision.auto,
    label_delim: LabelDelim = None,
    skip_missing: SkipMissing = False,
    ray: RayAddress = None,
    mlflow: Annotated[
        bool, typer.Option("--mlflow", help="Log to the MLflow run that trained MODEL.")
    ] = False,
) -> None:
    """Accuracy, per-class metrics and calibration of MODEL on DATA.

    With --out, also the confusion matrix, the most confident mistakes and calibration
    plots. A multi-label model: mAP, micro/macro F1, subset accuracy, Hamming loss, and
    with --out precision-recall curves and its most confident false positives/negatives.
    With --ray, Ray Data's actors run the model; the metrics are the same."""
    # deferred: metrics and plots load for this command only (start-up stays light)
    from imgcls.evaluate import evaluate, read_split, write_report

    ray = ray_address(ray)
    samples, skipped = read_split(
        data, split, label_delim=label_delim, skip_missing=skip_missing, nested=_nested(model)
    )
    names = [model, *(compare or [])]
    reports = []
    with ray_session(ray):
        for name in names:
            classifier = ImageClassifier(
                name,
                weights=weights if name == model else None,
                batch_size=batch_size,
                backend=ray_backend(ray, backend),
                precision=precision.value,
            )
            scored = None
            if ray is not None:
                runner = imgcls_ray().RayClassifier(classifier)
                scored = runner.scored_paths([str(path) for path, _ in samples])
            bar = ProgressBar(len(samples), f"evaluating {name}", enabled=not json_output)
            with bar as advance:
                evaluation = evaluate(
                    classifier, samples, progress=advance, skipped=skipped, scored=scored
                )
            metrics = evaluation.metrics()
            metrics.update(backend=classifier.runtime.backend, precision=classifier.precision)
            if out is not None:
                report_dir = out if len(names) == 1 else out / safe_filename(name)
                write_report(evaluation, metrics, report_dir)
            if mlflow and name == model:
                _log_to_mlflow(model, split, evaluation, metrics, write_report)
            reports.append(metrics)

    if json_output:
        print_json(reports[0] if len(reports) == 1 else reports)
    else:
        _print_evaluations(reports)
    raise typer.Exit(EXIT_INPUT_FAILED if any(r["failed"] for r in reports) else EXIT_OK)


def _log_to_mlflow(
    model: str, split: str, evaluation, metrics: dict[str, Any], write_report
) -> None:
    """The evaluation's metrics and report files, into the MLflow run of `model`'s run
    directory (its mlflow.json)."""
    import tempfile

    from imgcls.training.tracking import log_evaluation  # deferred: imports MLflow

    with tempfile.TemporaryDirectory() as report:
        write_report(evaluation, metrics, Path(report))
        run_id = log_evaluation(model, f"eval_{split}", metrics, Path(report))
    stderr.print(f"logged the evaluation to MLflow run {run_id}")


def _nested(model: str) -> bool:
    """Whether MODEL is a run trained on nested class folders (`--taxonomy folders`): its
    data is read the same way."""
    if not is_run_dir(model):
        return False
    return read_run_config(model).get("train", {}).get("taxonomy") == "folders"


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
        _print_conformal(reports[0])


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
        _print_conformal(reports[0])


def _print_conformal(report: dict[str, Any]) -> None:
    """The prediction sets at each standard level: coverage, sizes, the weakest class."""
    conformal = report.get("conformal")
    if not conformal:
        return
    table = Table(title=f"prediction sets ({conformal['score']})", title_justify="left")
    columns = ("level", "coverage", "mean size", "largest", "singletons", "weakest class")
    for column in columns:
        table.add_column(column, justify="left" if column == "weakest class" else "right")
    for level, m in conformal["levels"].items():
        weakest = m["weakest_class"]
        table.add_row(
            level,
            f"{m['coverage']:.1%}",
            f"{m['mean_set_size']:.2f}",
            str(m["max_set_size"]),
            f"{m['singleton_share']:.1%}",
            "-" if weakest is None else f"{weakest} ({m['weakest_class_coverage']:.1%})",
        )
    stdout.print(table)


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
