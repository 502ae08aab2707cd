"""Experiment tracking: what a training run reports to MLflow and TensorBoard as it goes.

The loop talks to one `Tracking` object, made on rank 0 alone (`open_tracking`): `start`
(the settings and tags), `log_epoch` (each metrics row), `log_artifacts` (the run
directory's files) and `finish` (the final scores, the model, its registration). A tracker
that fails warns once and is dropped: the training and its run directory never wait on it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from imgcls.data.datasets import DataSplits
from imgcls.data.images import load_image
from imgcls.errors import ConfigError
from imgcls.files import write_json
from imgcls.inference.classifier import ImageClassifier
from imgcls.reports import plots
from imgcls.training.config import TrainConfig, TrainResult
from imgcls.training.report import console
from imgcls.version import __version__

__all__ = [
    "MLFLOW_RUN",
    "MlflowTracker",
    "TensorBoardTracker",
    "Tracker",
    "Tracking",
    "dataset_fingerprint",
    "log_evaluation",
    "open_tracking",
    "tensorboard_available",
]

MLFLOW_RUN = "mlflow.json"  # in the run directory: the MLflow run it reports to
# Run-directory files not sent as artifacts: the resume state (optimizer moments, several
# times the weights) and the TensorBoard events, which the TensorBoard tracker owns.
_NOT_ARTIFACTS = ("state.pt", "tb")


class Tracker(Protocol):
    """One destination of a run's record (MLflow, TensorBoard)."""

    name: str

    def start(self, config: TrainConfig, tags: dict[str, str]) -> None: ...

    def log_epoch(self, row: dict[str, Any]) -> None: ...

    def log_artifacts(self, out: Path) -> None: ...

    def finish(self, result: TrainResult | None) -> None: ...


class Tracking:
    """The trackers of a run, each call guarded: the first failure of a tracker prints one
    warning and drops it, and the training goes on."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # a tracker's failure never ends the training
                self.trackers.remove(tracker)
                console.print(
                    f"[yellow]warning:[/yellow] {tracker.name} is not reachable or refused "
                    f"the run ({type(exc).__name__}: {_first_line(exc)}); training goes on "
                    "without it, the run directory is written as always"
                )

    def start(self, config: TrainConfig, splits: DataSplits) -> None:
        if not self.trackers:
            return
        tags = {
            "imgcls.version": __version__,
            "imgcls.data_fingerprint": dataset_fingerprint(splits),
            "imgcls.model": config.model,
        }
        self._each("start", config, tags)

    def log_epoch(self, row: dict[str, Any]) -> None:
        self._each("log_epoch", row)

    def log_artifacts(self, out: Path, splits: DataSplits) -> None:
        """The run directory's files, with the validation report drawn first."""
        if not self.trackers:
            return
        write_val_report(out, splits)
        self._each("log_artifacts", out)

    def finish(self, result: TrainResult | None) -> None:
        self._each("finish", result)


def open_tracking(config: TrainConfig, master: bool) -> Tracking:
    """The trackers `config` asks for, on rank 0 (DDP: the other ranks report nothing);
    a ConfigError on every rank when one asked for is not installed."""
    for wanted, package in (
        (config.mlflow is not None, "mlflow"),
        (config.tensorboard, "tensorboard"),
    ):
        if wanted and find_spec(package) is None:
            raise ConfigError(
                f"`{package}`: not installed; pip install 'imgcls[track]' (or leave it off)",
                parameters=(package,),
            )
    if not master:
        return Tracking([])
    trackers: list[Tracker] = []
    if config.mlflow is not None:
        trackers.append(MlflowTracker(config.mlflow, config.register))
    use_tb = tensorboard_available() if config.tensorboard is None else config.tensorboard
    if use_tb:
        trackers.append(TensorBoardTracker(Path(config.out) / "tb"))
    return Tracking(trackers)


def dataset_fingerprint(splits: DataSplits) -> str:
    """A short hash of what the run learned from: each split's files (path, size) and
    labels, and the class names. Cheap (no pixels read); it changes when a file is added,
    removed, replaced by one of another size or relabelled."""
    digest = hashlib.sha256("\n".join(splits.class_names).encode())
    for name, split in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
        for path, label in sorted(split, key=lambda item: str(item[0])):
            size = os.stat(path).st_size if os.path.exists(path) else -1
            digest.update(f"{name}\t{path}\t{size}\t{label}\n".encode())
    return digest.hexdigest()[:16]


def flat_params(config: TrainConfig) -> dict[str, str]:
    """The TrainConfig as MLflow params and TensorBoard hparams: every field, None as ''."""
    return {name: "" if value is None else str(value) for name, value in asdict(config).items()}


def write_val_report(out: Path, splits: DataSplits) -> None:
    """confusion_matrix.png and mistakes.png of the run's model on the validation split
    (single-label runs): what a tracker shows beside the curves."""
    if splits.multi_label or not splits.val:
        return
    from sklearn.metrics import confusion_matrix  # function-local: scikit-learn is heavy

    classifier = ImageClassifier(str(out), backend="torch")  # no export for one pass
    names = splits.class_names
    true, predicted, wrong = [], [], []
    answers = classifier.classify_paths([path for path, _ in splits.val], top_k=1)
    for (path, label), (_, answer) in zip(splits.val, answers, strict=True):
        if isinstance(answer, Exception):
            continue
        top = answer[0]
        true.append(label)
        predicted.append(top.index)
        if top.index != label:
            wrong.append((str(path), names[label], top.label, top.score))
    matrix = confusion_matrix(true, predicted, labels=list(range(len(names))))
    plots.confusion_matrix(np.asarray(matrix), names, out / "confusion_matrix.png")
    wrong.sort(key=lambda item: item[3], reverse=True)
    plots.mistakes(wrong[:16], out / "mistakes.png", title="Most confident mistakes (validation)")


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics row (None and NaN columns are left out)."""
    return {
        name: float(value)
        for name, value in row.items()
        if name != "epoch" and isinstance(value, int | float) and math.isfinite(value)
    }


def _final_metrics(result: TrainResult) -> dict[str, float]:
    """A finished run's scores under the names MLflow and TensorBoard show them."""
    named = {
        "best_val_accuracy": result.best_val_accuracy,
        "best_val_map": result.best_val_map,
        "test_accuracy": result.test_accuracy,
        "test_map": result.test_map,
        "best_epoch": result.best_epoch,
        "train_seconds": result.seconds,
    }
    if result.calibration:
        named["temperature"] = result.calibration.get("temperature")
        named["val_ece_after"] = result.calibration.get("val_ece_after")
    return _numbers(named)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else "no message"


# -- MLflow -------------------------------------------------------------------------------


class MlflowTracker:
    """An MLflow run per imgcls run: params, per-epoch metrics, the run directory as
    artifacts, and the model as a pyfunc that classifies images (`imgcls.training.mlflow_model`),
    registered under `register` when given."""

    name = "MLflow"

    def __init__(self, uri: str, register: str | None = None) -> None:
        self.uri = uri  # "" : MLflow's own default (./mlruns, or MLFLOW_TRACKING_URI)
        self.register = register
        self.run_id: str | None = None
        self.model_uri: str | None = None

    def start(self, config: TrainConfig, tags: dict[str, str]) -> None:
        import mlflow  # function-local: a heavy optional dependency ([track])

        _quiet_mlflow()
        if self.uri:
            mlflow.set_tracking_uri(self.uri)
        out = Path(config.out)
        previous = _read_mlflow_run(out) if config.resume else None
        if previous and previous["tracking_uri"] == mlflow.get_tracking_uri():
            run = mlflow.start_run(run_id=previous["run_id"])  # a resumed run goes on in it
        else:
            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "imgcls"))
            run = mlflow.start_run(run_name=out.name, tags=tags)
            mlflow.log_params(flat_params(config))
        self.run_id = run.info.run_id
        write_json(
            out / MLFLOW_RUN,
            {"tracking_uri": mlflow.get_tracking_uri(), "run_id": self.run_id,
             "experiment_id": run.info.experiment_id},
        )  # fmt: skip
        console.print(f"MLflow run {self.run_id} at {mlflow.get_tracking_uri()}")

    def log_epoch(self, row: dict[str, Any]) -> None:
        import mlflow  # function-local: a heavy optional dependency ([track])

        mlflow.log_metrics(_numbers(row), step=int(row["epoch"]))

    def log_artifacts(self, out: Path) -> None:
        import mlflow  # function-local: a heavy optional dependency ([track])

        for path in sorted(out.iterdir()):
            if path.name in _NOT_ARTIFACTS:
                continue
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=path.name)
            else:
                mlflow.log_artifact(str(path))

    def finish(self, result: TrainResult | None) -> None:
        import mlflow  # function-local: a heavy optional dependency ([track])

        if result is None:
            mlflow.end_run(status="FAILED")
            return
        mlflow.log_metrics(_final_metrics(result))
        self.model_uri = log_model(Path(result.run_dir), self.register)
        mlflow.end_run()
        if self.register:
            console.print(f"MLflow: registered {self.model_uri} as model {self.register!r}")


def _quiet_mlflow() -> None:
    """MLflow's defaults that do not suit a training command; a user's own settings win."""
    # A server that is down costs the run seconds, not minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    # stdout holds only --json's document; the run's URL goes to stderr (start).
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _read_mlflow_run(run_dir: Path) -> dict[str, str] | None:
    try:
        return json.loads((run_dir / MLFLOW_RUN).read_text())
    except (OSError, ValueError):
        return None


def log_evaluation(
    run_dir: str | os.PathLike, prefix: str, metrics: dict[str, Any], report: Path | None
) -> str:
    """Log an evaluation of a run directory to the MLflow run that trained it (its
    `mlflow.json` names the server and the run): the metrics as `PREFIX_name`, and the
    report's files under `PREFIX/`. The run id."""
    from mlflow import MlflowClient  # function-local: a heavy optional dependency ([track])

    previous = _read_mlflow_run(Path(run_dir))
    if previous is None:
        raise ConfigError(
            f"--mlflow: {run_dir} has no {MLFLOW_RUN}; it was trained without --mlflow, "
            "so there is no MLflow run to log the evaluation to"
        )
    _quiet_mlflow()
    client = MlflowClient(previous["tracking_uri"])
    numbers = {
        f"{prefix}_{name}": float(value)
        for name, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }
    run_id = previous["run_id"]
    for name, value in numbers.items():
        client.log_metric(run_id, name, value)
    if report is not None:
        client.log_artifacts(run_id, str(report), artifact_path=prefix)
    return run_id


def log_model(run_dir: Path, register: str | None = None) -> str:
    """Log the run directory as a pyfunc model of the active MLflow run (registered as
    `register` when given); its URI. The pyfunc runs `ImageClassifier` over the run
    directory, so it preprocesses, labels, calibrates and says "unknown" as imgcls does."""
    import mlflow  # function-local: a heavy optional dependency ([track])
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("binary", "image")]),
        outputs=Schema([ColSpec("string", "label"), ColSpec("string", "class_id"),
                        ColSpec("long", "index"), ColSpec("double", "score"),
                        ColSpec("boolean", "unknown")]),
        params=ParamSchema([ParamSpec("min_score", "double", None)]),
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as staged:
        model_dir = Path(staged) / run_dir.name  # what classifying needs, not state.pt
        shutil.copytree(run_dir, model_dir, ignore=shutil.ignore_patterns(*_NOT_ARTIFACTS))
        info = mlflow.pyfunc.log_model(
            name="model",
            # Models from code: MLflow runs this file to load the model, nothing is pickled.
            python_model=str(Path(__file__).with_name("mlflow_model.py")),
            artifacts={"run": str(model_dir)},
            signature=signature,
            registered_model_name=register,
            pip_requirements=[f"imgcls[train]=={__version__}"],
        )
    return info.model_uri


# -- TensorBoard --------------------------------------------------------------------------


def tensorboard_available() -> bool:
    """Whether `tensorboard` is installed (TensorBoard's event files are on by default then)."""
    return find_spec("tensorboard") is not None


class TensorBoardTracker:
    """Event files in `RUN/tb/`: the metrics of every epoch as scalars, the config as
    text, the run directory's plots as images, and the settings with the final scores as
    hparams (TensorBoard's HPARAMS tab compares runs by them)."""

    name = "TensorBoard"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.writer = None
        self.params: dict[str, str] = {}

    def start(self, config: TrainConfig, tags: dict[str, str]) -> None:
        # function-local: torch's writer imports tensorboard, an optional dependency
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.directory))
        self.params = flat_params(config)
        text = json.dumps({**asdict(config), **tags}, indent=2)
        self.writer.add_text("config", f"```\n{text}\n```")

    def log_epoch(self, row: dict[str, Any]) -> None:
        for name, value in _numbers(row).items():
            self.writer.add_scalar(name, value, int(row["epoch"]))
        self.writer.flush()

    def log_artifacts(self, out: Path) -> None:
        for path in sorted(out.glob("*.png")):  # curves, confusion matrix, mistakes
            self.writer.add_image(path.stem, load_image(path), dataformats="HWC")

    def finish(self, result: TrainResult | None) -> None:
        if result is not None:
            metrics = {f"final/{k}": v for k, v in _final_metrics(result).items()}
            self.writer.add_hparams(self.params, metrics, run_name=".")
        self.writer.close()
