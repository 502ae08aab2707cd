"""`imgcls doctor`: a data set's health report (corrupt files, duplicates, leaks,
warnings), likely mislabelled images (--labels), and moving flagged files to a quarantine
folder and back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from imgcls.cli.app import EXIT_INPUT_FAILED, EXIT_OK, app
from imgcls.cli.options import LabelDelim, SkipMissing
from imgcls.cli.output import json_command, print_json, stderr, stdout
from imgcls.errors import ConfigError
from imgcls.progress import ProgressBar


@app.command()
@json_command
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
    # deferred: the doctor's checks load for this command only (start-up stays light)
    import imgcls.doctor as doc

    if restore is not None:
        if data is not None or quarantine is not None or only is not None:
            raise ConfigError("--restore MANIFEST takes no DATA, --quarantine or --only")
        _restore(restore, json_output)
    if data is None:
        raise ConfigError("give DATA to check, or --restore MANIFEST")
    if labels:  # writes label_issues.csv (for --quarantine --only) and .html to --out
        _doctor_labels(data, out, json_output, top, label_delim, skip_missing)
        return
    if only is not None:
        if quarantine is None:
            raise ConfigError("--only FILE.csv needs --quarantine DIR")
        _quarantine_listed(data, only, quarantine, json_output)
        return
    bar = ProgressBar(0, "checking images", enabled=not json_output)
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
        print_json(result)
    else:
        _print_doctor(result)
    raise typer.Exit(EXIT_INPUT_FAILED if report.corrupt or report.leaks else EXIT_OK)


def _restore(manifest: Path, json_output: bool) -> None:
    """`doctor --restore MANIFEST`: the quarantined files moved back where they were."""
    import imgcls.doctor as doc  # deferred, as in `doctor`

    restored, problems = doc.restore(manifest)
    _report_moves({"restored": restored, "problems": problems}, json_output, "restored")
    raise typer.Exit(EXIT_INPUT_FAILED if problems else EXIT_OK)


def _quarantine_listed(data: Path, only: Path, quarantine: Path, json_output: bool) -> None:
    """`doctor DATA --quarantine DIR --only FILE.csv`: move exactly the files listed."""
    import imgcls.doctor as doc  # deferred, as in `doctor`

    moves = [(p, f"listed in {only}") for p in doc.paths_from_csv(data, only)]
    manifest = doc.quarantine(data, moves, quarantine)
    result = {"quarantined": [p for p, _ in moves], "manifest": str(manifest)}
    _report_moves(result, json_output, "quarantined")


def _doctor_labels(
    data: Path,
    out: Path | None,
    json_output: bool,
    top: int | None,
    label_delim: str | None,
    skip_missing: bool,
) -> None:
    """`doctor --labels`: rank images by how unlikely an out-of-fold model finds their
    label (imgcls.doctor.audit), print the worst, write the CSV and the gallery."""
    # deferred: the data set scan and the label audit load for --labels only
    from imgcls.data.datasets import scan_dataset
    from imgcls.data.label_files import is_label_file
    from imgcls.doctor.audit import audit_labels, write_audit

    if not (data.is_dir() or is_label_file(data)):
        raise ConfigError(f"DATA: no such directory {data} (nor a .csv / .jsonl label file)")
    reading = {"label_delim": label_delim, "skip_missing": skip_missing}
    total = sum(len(files) for files in scan_dataset(data, **reading).splits.values())
    with ProgressBar(total, "extracting features", enabled=not json_output) as advance:
        audit = audit_labels(data, progress=advance, **reading)
    report = audit.to_dict(top)
    if out is not None:
        report["files"] = [str(p) for p in write_audit(audit, out, top)]
    if json_output:
        print_json(report)
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
        print_json(result)
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
