"""`imgcls export`: a model to ONNX (optionally int8) or TorchScript, checked against
PyTorch; the check's figures printed or as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from imgcls.cli.app import app
from imgcls.cli.options import ExportFormat
from imgcls.cli.output import json_command, print_json, stdout
from imgcls.export import export_model


@app.command()
@json_command
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
        print_json(report)
    else:
        _print_export(report, out, int8)


def _print_export(report: dict[str, Any], out: Path, int8: bool) -> None:
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
