"""`imgcls explain`: a Grad-CAM heat map over an image, written as a picture."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import cv2
import typer

from imgcls.cli.app import app
from imgcls.cli.output import json_command, print_json, stdout
from imgcls.errors import ImageError, WriteError
from imgcls.explain import Explainer
from imgcls.files import atomic_write, make_dir
from imgcls.models.registry import DEFAULT_MODEL

_PICTURES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # what OpenCV writes; else .png


@app.command()
@json_command
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
    if not image.is_file():  # before the model load: a typo costs no wait
        raise ImageError(f"{image}: no such file")
    explanation = Explainer(model, weights=weights).explain(image, label)
    if out.suffix.lower() not in _PICTURES:
        out = out.with_suffix(".png")
    ok, encoded = cv2.imencode(out.suffix, cv2.cvtColor(explanation.overlay(), cv2.COLOR_RGB2BGR))
    if not ok:
        raise WriteError(f"{out}: OpenCV could not encode the heat map")
    make_dir(out.parent)
    atomic_write(out, lambda tmp: Path(tmp).write_bytes(encoded.tobytes()))
    prediction = explanation.prediction
    if json_output:
        print_json({"path": str(image), "out": str(out), **prediction.to_dict()})
    else:
        stdout.print(
            f"{image}: heat map for {prediction.label!r} ({prediction.score:.1%}) → {out}",
            highlight=False,
        )
