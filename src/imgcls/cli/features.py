"""`imgcls features`: the embeddings of every image of a folder or label file (with --ray,
of any source imgcls.data.sources lists), written to .npz or Parquet."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from imgcls.cli.app import EXIT_INPUT_FAILED, EXIT_OK, app
from imgcls.cli.on_ray import RayAddress, imgcls_ray, ray_address, ray_session
from imgcls.cli.options import LabelDelim, SkipMissing
from imgcls.cli.output import stderr, stdout
from imgcls.data.sources import expand_inputs
from imgcls.errors import DataError
from imgcls.inference.classifier import ImageClassifier
from imgcls.models.registry import DEFAULT_MODEL
from imgcls.progress import ProgressBar

if TYPE_CHECKING:
    from imgcls.features import Features


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
    # deferred: feature files and data set reading load for this command only
    from imgcls.features import extract_features

    ray = ray_address(ray)
    bar = ProgressBar(0, "extracting features")
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
    bar: ProgressBar,
) -> Features:
    """`features --ray`: the files of DATA (any source --ray takes) through Ray's actors."""
    from imgcls.features import collect_features  # deferred, as in `features`

    entries = expand_inputs([data], sources=True)
    paths = [entry for entry in entries if isinstance(entry, str)]
    if not paths:  # one DATA, and nothing in it
        raise DataError(str(entries[0][1]))
    bar.set_total(len(paths))
    classifier = ImageClassifier(model, weights=weights, batch_size=batch_size, backend="onnx")
    with ray_session(address):
        outcomes = imgcls_ray().RayClassifier(classifier).features_paths(paths)
        return collect_features(data, outcomes, advance)
