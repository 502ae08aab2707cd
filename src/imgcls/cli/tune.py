"""`imgcls tune`: an Optuna search over `imgcls train`'s settings; each trial a run
directory, the best linked as DIR/best (`imgcls.tune`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from imgcls.cli.app import app
from imgcls.cli.output import json_command, print_json, stderr, stdout
from imgcls.cli.train import BatchSize, Data, Epochs, ImgSize, Model, Pretrained, Workers
from imgcls.training.config import TrainConfig

_TRAIN = TrainConfig(data="DATA", out="RUN")


@app.command()
@json_command
def tune(
    data: Data,
    out: Annotated[Path, typer.Option(help="Study folder: study.db, trials/, best, table.")],
    trials: Annotated[int, typer.Option(min=1, help="Finished trials the study should hold.")] = 20,
    timeout: Annotated[
        float | None, typer.Option(min=1, help="Stop starting trials after this many seconds.")
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(help="Optuna storage URL shared by processes (default: DIR/study.db)."),
    ] = None,
    space: Annotated[
        Path | None, typer.Option(help="Search space, a JSON file (docs/train.md).")
    ] = None,
    model: Model = _TRAIN.model,
    pretrained: Pretrained = _TRAIN.pretrained,
    epochs: Epochs = 5,
    batch_size: BatchSize = _TRAIN.batch_size,
    img_size: ImgSize = _TRAIN.img_size,
    workers: Workers = _TRAIN.workers,
    json_output: Annotated[bool, typer.Option("--json", help="Print a final JSON object.")] = False,
) -> None:
    """Search training settings for the best validation score.

    The search covers learning rate, weight decay, augmentation, label smoothing, a frozen
    backbone and the classical heads.

    The study resumes when run again on the same --out, and several processes (or
    machines, with --storage) can work on one study at once."""
    # deferred: Optuna and torch load for this command only
    from imgcls.tune import read_space
    from imgcls.tune import tune as run_tune

    base = TrainConfig(
        data=str(data), out=str(out), model=model, pretrained=pretrained, epochs=epochs,
        batch_size=batch_size, img_size=img_size, workers=workers, progress=False,
    )  # fmt: skip
    base.check()
    result = run_tune(
        base, out, trials, timeout=timeout, storage=storage,
        space=None if space is None else read_space(space),
        say=lambda line: stderr.print(line, highlight=False),
    )  # fmt: skip
    if json_output:
        print_json(result.to_dict())
        return
    best = "n/a" if result.best_value is None else f"{result.best_value:.4f}"
    stdout.print(
        f"{result.trials} trial(s) ({result.complete} complete, {result.pruned} pruned); "
        f"best val {best} with {result.best_params}; best run {result.best_run}; "
        f"table {result.table}"
    )
