"""`imgcls tune`: a hyper-parameter search with Optuna over `imgcls train`.

TPE proposes the settings of each trial; a median pruner stops a trial whose validation
score at an epoch is below the median of the finished trials at that epoch (the training
loop reports every epoch through `train(..., on_epoch=)`); classical heads on frozen
features are trials too, of seconds. The study lives in Optuna's storage, by default
`DIR/study.db` (SQLite), so a killed tune resumes where it stopped and several processes
(or machines, with `--storage` on a shared database) work on one study. Each trial is a
normal run directory `DIR/trials/NNNN`; the best is linked as `DIR/best`, the trials are
tabled in `DIR/trials.csv` and the parameters' importance drawn in `DIR/importance.png`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from imgcls.errors import ConfigError
from imgcls.files import make_dir, write_text
from imgcls.reports import plots
from imgcls.training.config import CLASSIFIERS, TrainConfig

__all__ = ["DEFAULT_SPACE", "TuneResult", "default_space", "read_space", "tune"]

# The search space: a parameter is a list of choices, {"low", "high"[, "log"]} for a
# float range, or a single value that every trial takes. The parameters other than
# `classifier` apply to trials trained end to end (softmax); a head trial fits in seconds.
# Without pretrained weights, heads and a frozen backbone have nothing to stand on: they
# leave the default space (`default_space`).
DEFAULT_SPACE: dict[str, Any] = {
    "classifier": ["softmax", "logreg", "svm"],
    "lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "weight_decay": {"low": 1e-4, "high": 0.1, "log": True},
    "augment": ["none", "light", "strong"],
    "label_smoothing": {"low": 0.0, "high": 0.2},
    "freeze_backbone": [False, True],
}
_STUDY = "imgcls"
_FINISHED = ("COMPLETE", "PRUNED")


@dataclass
class TuneResult:
    """What a tune reports (the CLI prints it with --json)."""

    study: str  # the storage URL
    trials: int  # finished trials in the study (complete or pruned)
    complete: int
    pruned: int
    failed: int
    best_value: float | None  # the best validation accuracy (multi-label: mAP)
    best_params: dict[str, Any]
    best_run: str | None  # DIR/best, the best trial's run directory
    table: str
    importance: str | None  # None when too few trials finished to weigh the parameters

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_space(base: TrainConfig) -> dict[str, Any]:
    """DEFAULT_SPACE, less the heads and the frozen backbone when `base` starts from no
    pretrained weights (random features teach a head nothing)."""
    if base.pretrained or base.weights:
        return dict(DEFAULT_SPACE)
    return {k: v for k, v in DEFAULT_SPACE.items() if k not in ("classifier", "freeze_backbone")}


def read_space(path: str | os.PathLike) -> dict[str, Any]:
    """A search space from a JSON file, checked against TrainConfig's fields."""
    try:
        space = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--space {path}: not a readable JSON file ({exc})") from exc
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"--space {path}: expected a JSON object of parameters")
    _check_space(space, str(path))
    return space


def _check_space(space: dict[str, Any], where: str) -> None:
    names = {f.name for f in fields(TrainConfig)} - {"data", "out", "resume", "progress"}
    for name, spec in space.items():
        if name not in names:
            raise ConfigError(f"{where}: `{name}` is not a training setting (TrainConfig)")
        if isinstance(spec, dict):
            ok = set(spec) <= {"low", "high", "log"} and {"low", "high"} <= set(spec)
            if not ok or not spec["low"] < spec["high"]:
                raise ConfigError(
                    f"{where}: `{name}` must be a list of choices, a value, or "
                    '{"low": L, "high": H[, "log": true]} with L < H'
                )
        elif isinstance(spec, list) and not spec:
            raise ConfigError(f"{where}: `{name}` has no choices")
    classifiers = space.get("classifier", ["softmax"])
    for kind in classifiers if isinstance(classifiers, list) else [classifiers]:
        if kind not in CLASSIFIERS:
            raise ConfigError(
                f"{where}: classifier `{kind}` is not one of {', '.join(CLASSIFIERS)}"
            )


def tune(
    base: TrainConfig,
    out: str | os.PathLike,
    trials: int,
    timeout: float | None = None,
    storage: str | None = None,
    space: dict[str, Any] | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> TuneResult:
    """Search `space` (default `default_space(base)`) around `base` until the study holds
    `trials` finished trials or `timeout` seconds pass; write DIR/best, the table, the plot."""
    try:
        import optuna  # function-local: a heavy optional dependency ([track])
    except ImportError:
        raise ConfigError("imgcls tune needs Optuna: pip install 'imgcls[track]'") from None

    space = default_space(base) if space is None else space
    _check_space(space, "space")
    out = make_dir(out)
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines on stderr instead
    # Heartbeats let another process mark a killed trial failed (after the grace period)
    # instead of leaving it running for ever.
    # SQLite: writers of several processes wait for each other's lock instead of failing.
    engine = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else None
    rdb = optuna.storages.RDBStorage(
        storage, engine_kwargs=engine, heartbeat_interval=30, grace_period=90
    )
    study = optuna.create_study(
        study_name=_STUDY, storage=rdb, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    )  # fmt: skip

    def objective(trial: optuna.Trial) -> float:
        run_dir = out / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        config = _trial_config(trial, base, space, run_dir)
        say(f"trial {trial.number}: {_describe(trial.params)}")

        def report(epoch: int, score: float | None) -> None:
            if score is None:
                return
            trial.report(score, epoch)
            if trial.should_prune():
                say(f"trial {trial.number}: pruned after epoch {epoch} (val {score:.4f})")
                raise optuna.TrialPruned

        from imgcls.training.loop import train  # function-local: torch, a heavy dependency

        result = train(config, on_epoch=report)
        score = result.best_val_map if result.multi_label else result.best_val_accuracy
        if score is None:
            raise ConfigError("tune needs a validation set: DATA/val, or a --val-split > 0")
        say(f"trial {trial.number}: val {score:.4f} in {result.seconds:.0f}s")
        return score

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    study.optimize(
        objective, timeout=timeout, catch=(),
        callbacks=[optuna.study.MaxTrialsCallback(trials, states=finished)],
    )  # fmt: skip
    return _report(study, out, storage)


def _trial_config(trial, base: TrainConfig, space: dict[str, Any], out: Path) -> TrainConfig:
    """The TrainConfig of a trial: `base` with the values the sampler suggests."""
    values: dict[str, Any] = {}
    classifier = _suggest(trial, "classifier", space.get("classifier", base.classifier))
    values["classifier"] = classifier
    if classifier == "softmax":
        for name, spec in space.items():
            if name != "classifier":
                values[name] = _suggest(trial, name, spec)
    return replace(base, out=str(out), progress=False, resume=False, **values)


def _suggest(trial, name: str, spec: Any) -> Any:
    if isinstance(spec, dict):
        return trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
    if isinstance(spec, list):
        return trial.suggest_categorical(name, spec)
    return spec


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}"
        for name, value in params.items()
    )


def _report(study, out: Path, storage: str) -> TuneResult:
    """DIR/best, DIR/trials.csv and DIR/importance.png from the study as it stands."""
    import optuna  # function-local: a heavy optional dependency ([track])

    states = [trial.state.name for trial in study.trials]
    table = out / "trials.csv"
    frame = study.trials_dataframe(
        attrs=("number", "state", "value", "duration", "params", "user_attrs")
    )
    write_text(table, frame.to_csv(index=False))
    # Trials of this tune's own (trials added to the study by hand have no run directory).
    complete = [
        t
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE and "run_dir" in t.user_attrs
    ]
    best = max(complete, key=lambda t: t.value) if complete else None
    best_run = None if best is None else _link_best(out, Path(best.user_attrs["run_dir"]))
    importance_path = None
    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # fewer than two complete trials, or no parameter
        importances = {}
    if importances:
        importance_path = str(out / "importance.png")
        plots.param_importance(importances, importance_path)
    return TuneResult(
        study=storage,
        trials=sum(state in _FINISHED for state in states),
        complete=states.count("COMPLETE"),
        pruned=states.count("PRUNED"),
        failed=states.count("FAIL"),
        best_value=None if best is None else best.value,
        best_params={} if best is None else best.params,
        best_run=best_run,
        table=str(table),
        importance=importance_path,
    )


def _link_best(out: Path, run_dir: Path) -> str:
    """DIR/best -> the best trial's run directory (a relative link, swapped atomically)."""
    link = out / "best"
    staged = out / f".best.{os.getpid()}"
    staged.unlink(missing_ok=True)
    staged.symlink_to(os.path.relpath(run_dir, out), target_is_directory=True)
    os.replace(staged, link)
    return str(link)
