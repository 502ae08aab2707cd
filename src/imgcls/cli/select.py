"""`imgcls select`: the images worth labelling next, as a label file to fill in."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from imgcls.cli.app import EXIT_INPUT_FAILED, EXIT_OK, app
from imgcls.cli.output import json_command, print_json, stderr, stdout
from imgcls.select import DEFAULT_STRATEGY, STRATEGIES, select_images, write_queue

Strategy = StrEnum("Strategy", [(name, name) for name in STRATEGIES])
DEFAULT = Strategy(DEFAULT_STRATEGY)


@app.command("select")
@json_command
def select(
    source: Annotated[
        str,
        typer.Argument(
            metavar="SOURCE",
            help="A folder of images (searched recursively), a LABELS.csv/.jsonl (its rows "
            "with an empty label), or the server's kept sample (its folder).",
        ),
    ],
    model: Annotated[
        str, typer.Option("--model", "-m", help="The run directory (or model) to rank with.")
    ],
    budget: Annotated[int, typer.Option(min=1, help="How many images to choose.")],
    out: Annotated[Path, typer.Option(help="The CSV label file to write (label column empty).")],
    strategy: Annotated[
        Strategy, typer.Option(help="How to rank; the others are there for comparison.")
    ] = DEFAULT,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the random strategy.")] = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The images of SOURCE worth labelling next, as a label file.

    Chooses the BUDGET images whose labels would teach the model most. The default
    takes the least sure (margin of the calibrated scores), one per k-means cluster of
    the model's embeddings, so near-copies of one confusing image take one place. OUT
    is a label file: fill in `label` and train."""
    chosen = select_images(source, model, budget, str(strategy), batch_size=batch_size, seed=seed)
    written = write_queue(chosen, out)
    for failure in chosen.failures:
        stderr.print(f"[red]✗[/red] {escape(str(failure))}", highlight=False)
    if json_output:
        print_json({
            "out": str(written),
            "strategy": str(strategy),
            "considered": chosen.considered,
            "failed": [str(failure) for failure in chosen.failures],
            "selected": [
                {"path": p, "guess": g, "score": round(s, 6), "margin": round(m, 6), "reason": r}
                for p, g, s, m, r in zip(chosen.paths, chosen.guesses, chosen.scores,
                                         chosen.margins, chosen.reasons, strict=True)
            ],
        })  # fmt: skip
    else:
        table = Table("path", "guess", "score", "margin", "reason")
        for p, g, s, m, r in zip(chosen.paths, chosen.guesses, chosen.scores, chosen.margins,
                                 chosen.reasons, strict=True):  # fmt: skip
            table.add_row(escape(p), escape(g), f"{s:.3f}", f"{m:.3f}", escape(r))
        stdout.print(table)
        stdout.print(f"{len(chosen.paths)} of {chosen.considered} images → {written}")
    raise typer.Exit(EXIT_INPUT_FAILED if chosen.failures else EXIT_OK)
