"""`imgcls predict` as a user runs it: real processes, JSON contract, exit codes, offline;
and stdout that is JSON alone under --json, whatever a library prints."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CAT_IDS, ESPRESSO_ID, cli_env, run_cli, run_python, write_photo_crops
from typer.testing import CliRunner

from imgcls.cli import app

PREDICTION_KEYS = {"label", "class_id", "index", "score", "unknown", "present"}


def test_json_follows_the_contract_in_input_order(samples, tmp_path):
    folder = tmp_path / "照片"  # a non-ASCII directory, searched recursively
    (folder / "nested").mkdir(parents=True)
    shutil.copy(samples / "cat.jpg", folder / "nested" / "猫.jpg")
    (tmp_path / "notes.jpg").write_text("just text")
    inputs = [
        str(samples / "espresso.jpg"),
        str(tmp_path / "missing.jpg"),
        str(folder),
        str(tmp_path / "notes.jpg"),
    ]

    result = run_cli("predict", *inputs, "--json", "--top-k", "3")

    assert result.returncode == 1, result.stderr  # some inputs failed, the rest went on
    assert "note:" not in result.stderr  # nothing held back: the ImageNet model exports
    records = json.loads(result.stdout)
    assert [r["path"] for r in records] == [
        inputs[0],
        inputs[1],
        str(folder / "nested" / "猫.jpg"),
        inputs[3],
    ]
    espresso, missing, cat, notes = records
    assert espresso["predictions"][0]["class_id"] == ESPRESSO_ID
    assert cat["predictions"][0]["class_id"] in CAT_IDS
    for record in (espresso, cat):
        assert len(record["predictions"]) == 3
        assert all(set(p) == PREDICTION_KEYS for p in record["predictions"])
        # A single-label model asserts its top-1: the one present prediction, the label.
        assert [p["present"] for p in record["predictions"]] == [True, False, False]
        assert record["labels"] == [record["predictions"][0]["label"]]
        scores = [p["score"] for p in record["predictions"]]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1
    assert missing["error"]["type"] == "FileNotFoundError"
    assert notes["error"]["type"] == "ImageError" and "notes.jpg" in notes["error"]["message"]


def test_human_output_is_a_table_and_exit_zero(samples):
    script = Path(sys.executable).with_name("imgcls")  # the console script, when installed
    command = [str(script)] if script.exists() else [sys.executable, "-m", "imgcls"]
    result = subprocess.run(
        [*command, "predict", str(samples)],
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env(),
    )
    assert result.returncode == 0, result.stderr
    for expected in ("cat.jpg", "espresso.jpg", "rocket.jpg", "espresso", "n07920052", "%"):
        assert expected in result.stdout


def test_backend_option_picks_the_runtime_that_answers(tiny_run, samples, tmp_path, monkeypatch):
    """torch runs the model eagerly, onnx exports it into IMGCLS_CACHE_DIR first; both
    give the same answers. (In this process, as `imgcls.cli` is the command's code: two
    more interpreters would cost a torch import each.)"""
    answers = {}
    for backend in ("torch", "onnx"):
        monkeypatch.setenv("IMGCLS_CACHE_DIR", str(tmp_path / backend))
        args = ["predict", str(samples), "--model", str(tiny_run), "--backend", backend, "--json"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        answers[backend] = json.loads(result.stdout)
    assert not list(tmp_path.glob("torch/*.onnx"))
    assert len(list(tmp_path.glob("onnx/*.onnx"))) == 1
    for eager, exported in zip(answers["torch"], answers["onnx"], strict=True):
        assert eager["path"] == exported["path"]
        assert [p["label"] for p in eager["predictions"]] == [
            p["label"] for p in exported["predictions"]
        ]
        for a, b in zip(eager["predictions"], exported["predictions"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)


SOCKET_GUARD = """
import socket, os
def _refuse(*args, **kwargs):
    with open(os.environ["NETWORK_LOG"], "a") as log:
        log.write(repr(args[:2]) + "\\n")
    raise OSError("network blocked by test")
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
"""


def test_predict_makes_no_network_call(samples, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SOCKET_GUARD)
    env = cli_env()
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    env["NETWORK_LOG"] = str(tmp_path / "attempts.log")
    result = run_cli("predict", str(samples / "cat.jpg"), "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["predictions"][0]["class_id"] in CAT_IDS
    assert not (tmp_path / "attempts.log").exists()


@pytest.mark.skipif(
    shutil.which("unshare") is None
    or subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0,
    reason="needs unshare -n (a network namespace) on this machine",
)
def test_predict_works_with_no_network_interface_at_all(samples):
    result = run_cli("predict", str(samples / "espresso.jpg"), "--json", prefix=("unshare", "-n"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["predictions"][0]["class_id"] == ESPRESSO_ID


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("predict", "x.jpg", "--model", "resnet5O"), "unknown model 'resnet5O'"),
        (("predict", "x.jpg", "--weights", "/nonexistent/w.safetensors"), "no such weights file"),
        (("predict", "x.jpg", "--top-k", "0"), "--top-k"),
        (("predict",), "Missing argument"),
    ],
)
def test_usage_errors_exit_2_with_a_message_not_a_traceback(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_output_streams_json_lines_and_a_rerun_skips_what_is_done(samples, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    output = tmp_path / "preds.jsonl"
    inputs = (str(samples), str(tmp_path / "broken.jpg"))
    first = run_cli("predict", *inputs, "--output", str(output), "--top-k", "1")
    assert first.returncode == 1  # the broken file
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == 4 and sum("error" in r for r in records) == 1
    with open(output, "a") as f:
        f.write('{"path": "torn')  # what a kill in the middle of a write leaves
    again = run_cli("predict", *inputs, "--output", str(output), "--top-k", "1")
    assert again.returncode == 0, again.stderr
    assert "0 images" in again.stdout
    lines = output.read_text().splitlines()
    assert len(lines) == 5 and lines[-1] == '{"path": "torn'


def test_shards_split_the_inputs_without_overlap(samples, tmp_path):
    paths = []
    for k in (0, 1):
        result = run_cli("predict", str(samples), "--shard", f"{k}/2", "--json", "--top-k", "1")
        assert result.returncode == 0, result.stderr
        paths.append([r["path"] for r in json.loads(result.stdout)])
    assert len(paths[0]) == 2 and len(paths[1]) == 1
    assert sorted(paths[0] + paths[1]) == sorted(str(p) for p in samples.glob("*.jpg"))
    bad = run_cli("predict", str(samples), "--shard", "2/2")
    assert bad.returncode == 2 and "--shard" in bad.stderr


MAIN = """
from imgcls.cli import main
sys.argv = ["imgcls", *sys.argv[1:]]
main()
"""
# PyTorch's own adaptive pool in SimpleCNN, as it was: at 28 px the exporter refuses it
# and prints its graph on stdout.
UNEXPORTABLE_POOL = (
    """
import sys, torch
import imgcls.models.simple_cnn
imgcls.models.simple_cnn.AdaptiveAvgPool2d = torch.nn.AdaptiveAvgPool2d
"""
    + MAIN
)
# A library that talks on stdout three ways: Python, write(2), and C stdio (which a pipe
# buffers until exit unless flushed).
LOUD_LIBRARY = (
    """
import ctypes, os, sys
from imgcls.inference.classifier import ImageClassifier
quiet = ImageClassifier.predict_batch
def loud(self, *args, **kwargs):
    print("from Python")
    os.write(1, b"from write(2)\\n")
    ctypes.CDLL(None).printf(b"from printf\\n")
    return quiet(self, *args, **kwargs)
ImageClassifier.predict_batch = loud
"""
    + MAIN
)


@pytest.fixture(scope="module")
def run_28px(tmp_path_factory) -> tuple[Path, Path]:
    """(run directory, data) of a simple_cnn trained one epoch at 28 px, where its pooled
    maps are 3x3: the size that once did not export."""
    root = tmp_path_factory.mktemp("run_28px")
    data = write_photo_crops(root / "data", per_class=6, size=28)
    result = run_cli(
        "train", str(data), "--out", str(root / "run"), "--model", "simple_cnn",
        "--no-pretrained", "--img-size", "28", "--epochs", "1", "--workers", "0", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["run_dir"] == str(root / "run")
    return root / "run", data


def test_a_28px_simple_cnn_run_exports_and_its_json_commands_print_json(run_28px):
    run_dir, data = run_28px
    evaluation = run_cli("evaluate", str(run_dir), str(data), "--json")
    assert evaluation.returncode == 0, evaluation.stderr
    assert json.loads(evaluation.stdout)["num_images"] == 18
    prediction = run_cli("predict", str(data / "cat" / "0.jpg"), "--model", str(run_dir), "--json")
    assert prediction.returncode == 0, prediction.stderr
    top = json.loads(prediction.stdout)[0]["predictions"][0]
    assert top["label"] in {"cat", "espresso", "rocket"}
    for result in (evaluation, prediction):  # ONNX Runtime ran it, and nothing was held back
        assert "ONNX export failed" not in result.stderr and "note:" not in result.stderr


def test_json_stays_json_when_the_export_fails_and_pytorch_runs_instead(run_28px, tmp_path):
    run_dir, data = run_28px
    image = str(data / "rocket" / "0.jpg")
    env = {**cli_env(), "IMGCLS_CACHE_DIR": str(tmp_path / "cache")}  # no export cached

    args = ("predict", image, "--model", str(run_dir), "--json")
    failed = run_python(UNEXPORTABLE_POOL, *args, env=env)
    assert failed.returncode == 0, failed.stderr
    assert json.loads(failed.stdout)[0]["path"] == image
    assert "ONNX export failed" in failed.stderr and "running on PyTorch instead" in failed.stderr
    notes = [line for line in failed.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and notes[0].endswith("to stdout; not shown with --json"), notes
    assert "Torch IR graph" not in failed.stdout + failed.stderr  # held back, not moved

    forced = run_cli(*args, "--backend", "torch", env=env)
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)[0]["path"] == image


def test_what_a_library_writes_to_stdout_under_json_becomes_one_line_on_stderr(run_28px):
    run_dir, data = run_28px
    image = str(data / "cat" / "1.jpg")
    result = run_python(LOUD_LIBRARY, "predict", image, "--model", str(run_dir), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["path"] == image
    assert "note: a library printed 3 lines to stdout; not shown with --json" in result.stderr
    for text in ("from Python", "from write(2)", "from printf"):
        assert text not in result.stdout + result.stderr

    human = run_python(LOUD_LIBRARY, "predict", image, "--model", str(run_dir))
    assert "from Python" in human.stdout and "from printf" in human.stdout  # only --json holds


def test_json_is_held_apart_under_clirunner_too(run_28px, monkeypatch):
    """typer's CliRunner swaps sys.stdout for a buffer, leaving file descriptor 1 alone."""
    import os

    from imgcls.inference.classifier import ImageClassifier

    run_dir, data = run_28px
    quiet = ImageClassifier.predict_batch

    def loud(self, *args, **kwargs):
        print("from Python")
        os.write(1, b"from write(2)\n")
        return quiet(self, *args, **kwargs)

    monkeypatch.setattr(ImageClassifier, "predict_batch", loud)
    image = str(data / "cat" / "2.jpg")
    result = CliRunner().invoke(app, ["predict", image, "--model", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["path"] == image
    assert "note: a library printed 2 lines to stdout" in result.stderr


COMMANDS = [
    (), ("predict",), ("evaluate",), ("features",), ("export",), ("benchmark",), ("serve",),
    ("explain",), ("train",), ("doctor",), ("feedback",), ("feedback", "export"),
    ("select",), ("index",), ("search",),
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "imgcls")
def test_help_reads_cleanly_in_80_columns(command):
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "<bool>" not in result.stdout  # a flag takes no value
    if "Commands:" in lines:  # each summary whole, not cut off with "..."
        summaries = lines[lines.index("Commands:") + 1 :]
        assert summaries and not any(line.endswith("...") for line in summaries), summaries


def test_help_lists_the_choices_of_an_option():
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "80"})
    for choices in ("<none|light|strong>", "<adamw|sgd>", "<softmax|logreg|svm|mlp|knn>"):
        assert choices in result.stdout


def test_a_bad_choice_is_a_one_line_usage_error_naming_the_option():
    result = CliRunner().invoke(app, ["predict", "x.jpg", "--backend", "tensorflow"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "'--backend'" in lines[0], lines
    assert "'auto', 'torch', 'onnx'" in lines[0]


def test_train_options_default_to_the_train_config_defaults():
    import typer

    from imgcls.training.config import TrainConfig

    command = typer.main.get_command(app).commands["train"]
    options = {param.name: param.default for param in command.params}
    config = vars(TrainConfig(data="DATA", out="RUN"))
    shared = sorted(set(options) & set(config) - {"data", "out"})
    assert len(shared) == len(config) - 3  # all but data and out (no defaults) and progress
    assert [options[name] for name in shared] == [config[name] for name in shared]
