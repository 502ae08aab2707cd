"""imgcls on Ray Data: `Predictor`, `Featurizer` and `predict|features|evaluate --ray`
give what the local commands give, on a real local Ray.

One Ray serves the module (started by `imgcls.ray.session`, on this machine's cores); the
commands run in this process and use it, as they use a caller's Ray. The first test runs
the command line in its own process instead, where it starts and stops a Ray of its own.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli, write_photo_crops
from typer.testing import CliRunner

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

import imgcls.ray  # noqa: E402  (after the skip: the core install has no Ray)
from imgcls.cli import app  # noqa: E402

TOP_K = 3


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Photo crops in class folders, and beside them files that do not decode."""
    root = write_photo_crops(tmp_path_factory.mktemp("ray") / "photos", per_class=4)
    (root / "junk.jpg").write_text("not an image")
    (root / "empty.png").write_bytes(b"")
    cut = (root / "cat" / "0.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(cut[: len(cut) // 2])
    return root


@pytest.fixture(scope="module")
def on_ray():
    with imgcls.ray.session():  # a local Ray on this machine's cores
        yield


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def same_answers(local: list[dict], on_ray: list[dict]) -> None:
    """The same paths in the same order, the same errors, the same top-k (scores 1e-5)."""
    assert [r["path"] for r in on_ray] == [r["path"] for r in local]
    for a, b in zip(local, on_ray, strict=True):
        assert a.get("error") == b.get("error"), a["path"]
        if "predictions" in a:
            assert [p["index"] for p in b["predictions"]] == [p["index"] for p in a["predictions"]]
            assert [p["label"] for p in b["predictions"]] == [p["label"] for p in a["predictions"]]
            expected = [p["score"] for p in a["predictions"]]
            scores = [p["score"] for p in b["predictions"]]
            assert np.allclose(scores, expected, rtol=0, atol=1e-5), a["path"]


def test_a_session_leaves_the_environment_as_it_found_it():
    """ray.init sets PYTHONBREAKPOINT and RAY_* in os.environ, which every later subprocess
    would inherit; the session takes them back. (First in this file: the module's shared
    session, once started, would be reused.)"""
    assert not ray.is_initialized()
    before = dict(os.environ)
    with imgcls.ray.session():
        assert "PYTHONBREAKPOINT" in set(os.environ) - set(before)  # what is to be undone
    assert dict(os.environ) == before


def test_the_command_line_starts_its_own_ray_and_stdout_holds_only_json(photos):
    local = run_cli("predict", str(photos), "--json", "--top-k", str(TOP_K))
    result = run_cli("predict", str(photos), "--ray", "--json", "--top-k", str(TOP_K))
    assert result.returncode == 1, result.stderr  # the files that do not decode
    assert "Traceback" not in result.stderr
    same_answers(json.loads(local.stdout), json.loads(result.stdout))


def test_predict_on_ray_answers_as_local_predict_with_the_same_error_rows(on_ray, photos):
    inputs = (str(photos), str(photos / "missing.jpg"), str(photos.parent / "no-such-dir"))
    local = invoke("predict", *inputs, "--json", "--top-k", str(TOP_K))
    result = invoke("predict", *inputs, "--ray", "--json", "--top-k", str(TOP_K))
    assert result.exit_code == local.exit_code == 1, result.output
    records = json.loads(result.stdout)
    same_answers(json.loads(local.stdout), records)
    errors = {Path(r["path"]).name: r["error"]["type"] for r in records if "error" in r}
    assert errors == {
        "empty.png": "ImageError",
        "junk.jpg": "ImageError",
        "truncated.jpg": "ImageError",
        "missing.jpg": "FileNotFoundError",
        "no-such-dir": "FileNotFoundError",
    }


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_rerun_skips_what_the_output_holds(on_ray, photos, tmp_path, suffix):
    output = tmp_path / f"preds{suffix}"
    first = invoke("predict", str(photos / "cat"), "--ray", "--output", str(output))
    assert first.exit_code == 0, first.output
    again = invoke("predict", str(photos), "--ray", "--output", str(output))
    assert again.exit_code == 1  # the files that do not decode
    said = " ".join(again.stdout.split())  # as rich wraps it
    assert f"{len(imgcls_files(photos)) - 4} images → {output} (3 failed)" in said
    records = read_output(output)
    assert sorted(r["path"] for r in records) == sorted(map(str, imgcls_files(photos)))
    local = invoke("predict", str(photos), "--json", "--top-k", "5")
    by_path = {r["path"]: r for r in records}
    same_answers(json.loads(local.stdout), [by_path[r["path"]] for r in json.loads(local.stdout)])


def imgcls_files(photos: Path) -> list[Path]:
    from imgcls.data.images import list_images

    return list_images(photos)


def read_output(output: Path) -> list[dict]:
    """The records of a predict output, JSON Lines or Parquet, with no null fields."""
    if output.suffix == ".jsonl":
        return [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(p.name for p in output.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    rows = pq.read_table(output).to_pylist()
    return [{key: value for key, value in row.items() if value is not None} for row in rows]


def test_a_read_binary_files_pipeline_as_a_user_writes_it(on_ray, photos, classifier):
    dataset = ray.data.read_binary_files(str(photos), include_paths=True)  # 1 CPU per read
    predictions = dataset.map_batches(
        imgcls.ray.Predictor,
        fn_constructor_kwargs={"model": imgcls.ray.bundle(), "top_k": TOP_K},
        **imgcls.ray.map_options(),
    )
    rows = {row["path"]: row for row in predictions.take_all()}
    paths = list(map(str, imgcls_files(photos)))
    assert sorted(rows) == sorted(paths)
    for path, outcome in classifier.classify_paths(paths, top_k=TOP_K):
        row = rows[path]
        if isinstance(outcome, Exception):
            assert row["error"] == {"type": type(outcome).__name__, "message": str(outcome)}
            assert row["label"] is None and row["top_k"] is None
            continue
        assert row["error"] is None
        assert [p["index"] for p in row["top_k"]] == [p.index for p in outcome]
        assert row["label"] == outcome[0].label and row["class_id"] == outcome[0].class_id
        assert abs(row["score"] - outcome[0].score) < 1e-5 and row["unknown"] is False


def test_a_run_directory_given_as_a_string_is_loaded_by_each_actor(on_ray, tiny_run):
    """The issue's own example: `fn_constructor_kwargs={"model": "runs/exp1"}`."""
    from imgcls import ImageClassifier

    photos = sorted(map(str, (tiny_run.parent / "data").rglob("*.jpg")))[::4]
    dataset = ray.data.from_items([{"path": path} for path in photos])  # the actors read them
    predictions = dataset.map_batches(
        imgcls.ray.Predictor,
        fn_constructor_kwargs={"model": str(tiny_run), "top_k": 2},
        **imgcls.ray.map_options(),
    )
    rows = {row["path"]: row for row in predictions.take_all()}
    local = ImageClassifier(str(tiny_run)).classify_paths(photos, top_k=2)
    for path, outcome in local:
        assert [p["index"] for p in rows[path]["top_k"]] == [p.index for p in outcome]
        assert rows[path]["unknown"] == outcome[0].unknown


def test_features_on_ray_write_parquet_equal_to_local_features(
    on_ray, photos, tmp_path, classifier
):
    out = tmp_path / "feats.parquet"
    result = invoke("features", str(photos), "--ray", "--out", str(out))
    assert result.exit_code == 1, result.output  # the files that do not decode
    assert "junk.jpg: not an image" in result.stderr
    table = pq.read_table(out).to_pylist()
    assert [row["path"] for row in table] == [
        f"{c}/{i}.jpg" for c in ("cat", "espresso", "rocket") for i in range(4)
    ]
    assert [row["label"] for row in table] == [row["path"].split("/")[0] for row in table]
    local = dict(classifier.features_paths([str(photos / row["path"]) for row in table]))
    for row in table:
        assert np.allclose(row["features"], local[str(photos / row["path"])], atol=1e-5)


def test_evaluate_on_ray_gives_the_local_metrics(on_ray, tiny_run):
    data = tiny_run.parent / "data"  # its training images: three classes of photo crops
    local = invoke("evaluate", str(tiny_run), str(data), "--json")
    result = invoke("evaluate", str(tiny_run), str(data), "--ray", "--json")
    assert result.exit_code == local.exit_code == 0, result.output
    metrics, expected = json.loads(result.stdout), json.loads(local.stdout)
    assert "reject" in expected  # the run's "unknown" rule travelled with its bundle
    for report in (metrics, expected):
        report.pop("images_per_s")
    assert rounded(metrics) == rounded(expected)


def rounded(value):
    """A JSON document with its numbers to 9 decimals (1 vs 2 threads sum in other orders)."""
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return round(value, 9) if isinstance(value, float) else value


def test_globs_lists_of_paths_and_uris_are_sources(on_ray, photos, tmp_path):
    listing = tmp_path / "paths.txt"
    shutil.copytree(photos / "rocket", tmp_path / "rocket")
    listing.write_text("# rockets\nrocket/0.jpg\n\nrocket/1.jpg\n")
    glob, uri = str(photos / "cat" / "*.jpg"), (photos / "espresso").as_uri()
    result = invoke("predict", glob, str(listing), uri, "--ray", "--json", "--top-k", "1")
    assert result.exit_code == 0, result.output
    paths = [r["path"] for r in json.loads(result.stdout)]
    assert paths == [
        *(str(photos / "cat" / f"{i}.jpg") for i in range(4)),
        str(tmp_path / "rocket" / "0.jpg"),
        str(tmp_path / "rocket" / "1.jpg"),
        *(f"{uri}/{i}.jpg" for i in range(4)),  # read by Ray's read tasks
    ]
    labels = [r["predictions"][0]["label"] for r in json.loads(result.stdout)]
    local = invoke("predict", str(photos / "espresso"), "--json", "--top-k", "1")
    assert labels[-4:] == [r["predictions"][0]["label"] for r in json.loads(local.stdout)]
    empty = invoke("predict", str(photos / "*.webp"), uri + "/nothing", "--ray", "--json")
    assert [r["error"]["message"] for r in json.loads(empty.stdout)] == [
        f"{photos / '*.webp'}: no file matches",
        f"{uri}/nothing: no such file or folder",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--ray", "photos/"), "--ray 'photos/' is not a Ray address"),
        (("--ray", "--shard", "0/2"), "--shard and --ray do not go together"),
        (("--ray", "--backend", "torch"), "--backend torch does not go with it"),
    ],
)
def test_ray_usage_errors_are_one_line_and_exit_2(args, message):
    result = invoke("predict", "x.jpg", *args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_a_gpu_actor_runs_on_cuda(on_ray, photos):
    import onnxruntime as ort

    if (
        not ray.cluster_resources().get("GPU")
        or "CUDAExecutionProvider" not in ort.get_available_providers()
    ):
        pytest.skip("no GPU with ONNX Runtime's CUDA provider here")
    predictor = ray.remote(num_gpus=1)(imgcls.ray.Predictor).remote(imgcls.ray.bundle())
    device = ray.get(predictor.__ray_call__.remote(lambda self: self.classifier.runtime.device))
    assert device == "cuda"
