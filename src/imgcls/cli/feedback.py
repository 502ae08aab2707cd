"""`imgcls feedback export`: the corrections `imgcls serve` collected, as a new data set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from imgcls.cli.app import app
from imgcls.cli.output import json_command, print_json, stdout
from imgcls.serve.feedback import DEFAULT_FEEDBACK_DIR, export_feedback

feedback_app = typer.Typer(
    help="The corrections collected by `imgcls serve`.", no_args_is_help=True
)
app.add_typer(feedback_app, name="feedback")


@feedback_app.command("export")
@json_command
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
    counts = export_feedback(feedback_dir, out)
    if json_output:
        print_json({"out": str(out), "classes": counts, "num_images": sum(counts.values())})
    else:
        stdout.print(f"{sum(counts.values())} images in {len(counts)} classes → {out}")
