"""`imgcls index` and `imgcls search`: an embedding index of a folder or label file, and
the indexed images most like a query image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from imgcls.cli.app import EXIT_INPUT_FAILED, EXIT_OK, app
from imgcls.cli.options import LabelDelim, SkipMissing
from imgcls.cli.output import json_command, print_json, stderr, stdout
from imgcls.models.registry import DEFAULT_MODEL
from imgcls.progress import ProgressBar


@app.command()
@json_command
def index(
    source: Annotated[
        str,
        typer.Argument(metavar="SOURCE", help="A folder of images, or a LABELS.csv/.jsonl."),
    ],
    out: Annotated[Path, typer.Option(help="The index folder to write (replaced whole).")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Backbone name or run directory.")
    ] = DEFAULT_MODEL,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 8,
    label_delim: LabelDelim = None,
    skip_missing: SkipMissing = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """An embedding index of SOURCE, for similar-image search.

    `imgcls search` and the server's /v1/similar (serve --index) read it."""
    # deferred: feature extraction and faiss load for this command only
    from imgcls.features import extract_features
    from imgcls.similar import build_index

    bar = ProgressBar(0, "extracting features")
    with bar as advance:
        found = extract_features(
            source, model, None, batch_size, progress=advance, on_total=bar.set_total,
            label_delim=label_delim, skip_missing=skip_missing,
        )  # fmt: skip
    for failure in found.failures:
        stderr.print(f"[red]✗[/red] {escape(str(failure))}", highlight=False)
    written = build_index(found, model, out)
    if json_output:
        print_json({"out": str(written), "model": model, "num_images": len(found.paths),
                    "failed": [str(failure) for failure in found.failures]})  # fmt: skip
    else:
        stdout.print(f"{len(found.paths)} images → {written}")
    raise typer.Exit(EXIT_INPUT_FAILED if found.failures else EXIT_OK)


@app.command()
@json_command
def search(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="The query image.")],
    index_dir: Annotated[
        Path, typer.Option("--index", help="An index folder `imgcls index` wrote.")
    ],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="How many images to return.")] = 10,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The K indexed images most like IMAGE, most similar first.

    Similarity is the cosine of the embeddings of the index's model."""
    from imgcls.similar import EmbeddingIndex  # deferred: faiss loads for this command only

    found = EmbeddingIndex(index_dir).search(image, k)
    if json_output:
        print_json({"image": str(image), "index": str(index_dir),
                    "neighbours": [n.to_dict() for n in found]})  # fmt: skip
        return
    table = Table("similarity", "path", "label")
    for neighbour in found:
        table.add_row(
            f"{neighbour.similarity:.3f}", escape(neighbour.path), escape(neighbour.label)
        )
    stdout.print(table)
