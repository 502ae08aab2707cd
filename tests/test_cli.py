"""`imgcls predict` as a user runs it: real processes, JSON contract, exit codes, offline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CAT_IDS, ESPRESSO_ID, cli_env, imgcls_command
from typer.testing import CliRunner

from imgcls.cli import app

PREDICTION_KEYS = {"label", "class_id", "index", "score", "unknown"}


def run(*args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()):
    return subprocess.run(
        [*prefix, *imgcls_command(*args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env or cli_env(),
    )


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

    result = run("predict", *inputs, "--json", "--top-k", "3")

    assert result.returncode == 1, result.stderr  # some inputs failed, the rest went on
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
        scores = [p["score"] for p in record["predictions"]]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1
    assert missing["error"]["type"] == "FileNotFoundError"
    assert notes["error"]["type"] == "ImageError" and "notes.jpg" in notes["error"]["message"]


def test_human_output_is_a_table_and_exit_zero(samples):
    script = Path(sys.executable).with_name("imgcls")
    command = [str(script)] if script.exists() else imgcls_command()
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
    result = run("predict", str(samples / "cat.jpg"), "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["predictions"][0]["class_id"] in CAT_IDS
    assert not (tmp_path / "attempts.log").exists()


@pytest.mark.skipif(
    shutil.which("unshare") is None
    or subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0,
    reason="needs unshare -n (a network namespace) on this machine",
)
def test_predict_works_with_no_network_interface_at_all(samples):
    result = run("predict", str(samples / "espresso.jpg"), "--json", prefix=("unshare", "-n"))
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
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_output_streams_json_lines_and_a_rerun_skips_what_is_done(samples, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    output = tmp_path / "preds.jsonl"
    inputs = (str(samples), str(tmp_path / "broken.jpg"))
    first = run("predict", *inputs, "--output", str(output), "--top-k", "1")
    assert first.returncode == 1  # the broken file
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(records) == 4 and sum("error" in r for r in records) == 1
    with open(output, "a") as f:
        f.write('{"path": "torn')  # what a kill in the middle of a write leaves
    again = run("predict", *inputs, "--output", str(output), "--top-k", "1")
    assert again.returncode == 0, again.stderr
    assert "0 images" in again.stdout
    lines = output.read_text().splitlines()
    assert len(lines) == 5 and lines[-1] == '{"path": "torn'


def test_shards_split_the_inputs_without_overlap(samples, tmp_path):
    paths = []
    for k in (0, 1):
        result = run("predict", str(samples), "--shard", f"{k}/2", "--json", "--top-k", "1")
        assert result.returncode == 0, result.stderr
        paths.append([r["path"] for r in json.loads(result.stdout)])
    assert len(paths[0]) == 2 and len(paths[1]) == 1
    assert sorted(paths[0] + paths[1]) == sorted(str(p) for p in samples.glob("*.jpg"))
    bad = run("predict", str(samples), "--shard", "2/2")
    assert bad.returncode == 2 and "--shard" in bad.stderr
