"""Similar images: `imgcls index` over real files with a real (tiny) run, then the
nearest images to a query, from Python, the command line and the saved folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli, write_photo_crops

from imgcls.errors import DataError
from imgcls.features import Features, extract_features
from imgcls.similar import EmbeddingIndex, build_index


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photo_crops(tmp_path_factory.mktemp("photos") / "data", per_class=6, size=32)


@pytest.fixture(scope="module")
def index_dir(photos, tiny_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("index") / "photos.index"
    build_index(extract_features(photos, str(tiny_run)), str(tiny_run), out)
    return out


def test_an_indexed_image_finds_itself_first(photos, index_dir):
    index = EmbeddingIndex(index_dir)
    query = photos / "rocket" / "3.jpg"

    found = index.search(query, k=5)

    assert len(index) == 18 and len(found) == 5
    assert (found[0].path, found[0].label) == ("rocket/3.jpg", "rocket")
    assert found[0].similarity == pytest.approx(1.0, abs=1e-4)
    assert [n.similarity for n in found] == sorted((n.similarity for n in found), reverse=True)


def test_search_matches_exact_cosine_search(photos, tiny_run, index_dir):
    features = extract_features(photos, str(tiny_run))
    vectors = features.vectors / np.linalg.norm(features.vectors, axis=1, keepdims=True)
    index = EmbeddingIndex(index_dir)
    for row in (0, 7, 15):
        exact = np.argsort(-(vectors @ vectors[row]))[:10]
        found = index.search_vector(features.vectors[row], k=10)
        assert [n.path for n in found] == [features.paths[i] for i in exact]


def test_a_folder_that_is_no_index_is_refused_by_name(tmp_path):
    with pytest.raises(DataError, match="not an index"):
        EmbeddingIndex(tmp_path)


def test_embeddings_of_another_width_are_refused(index_dir):
    with pytest.raises(DataError, match="256-feature embeddings, got 3"):
        EmbeddingIndex(index_dir).search_vector(np.ones(3), k=2)


def test_nothing_to_index_says_so(tmp_path):
    empty = Features(str(tmp_path), [], [], np.zeros((0, 0), np.float32), [])
    with pytest.raises(DataError, match="nothing to index"):
        build_index(empty, "simple_cnn", tmp_path / "x.index")


def test_cli_index_then_search_as_json(photos, tiny_run, tmp_path):
    out = tmp_path / "cli.index"
    made = run_cli("index", str(photos), "--model", str(tiny_run), "--out", str(out), "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["num_images"] == 18

    query = tmp_path / "query.jpg"
    shutil.copy(photos / "cat" / "2.jpg", query)
    found = run_cli("search", str(query), "--index", str(out), "-k", "3", "--json")

    assert found.returncode == 0, found.stderr
    neighbours = json.loads(found.stdout)["neighbours"]
    assert len(neighbours) == 3 and neighbours[0]["path"] == "cat/2.jpg"


def test_cli_search_of_a_missing_image_is_one_clear_line(index_dir, tmp_path):
    result = run_cli("search", str(tmp_path / "nope.jpg"), "--index", str(index_dir))

    assert result.returncode != 0
    assert "nope.jpg" in result.stderr and "Traceback" not in result.stderr


def test_server_with_an_index_answers_similar_images(photos, tiny_run, index_dir):
    import httpx
    from serve_utils import thread_server

    query = (photos / "espresso" / "4.jpg").read_bytes()
    with (
        thread_server(models=(str(tiny_run),), index=str(index_dir)) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        multipart = client.post("/v1/similar?k=3", files={"file": ("q.jpg", query)})
        raw = client.post("/v1/similar", content=query, headers={"Content-Type": "image/jpeg"})
        broken = client.post("/v1/similar", files={"file": ("bad.jpg", b"not an image")})

    assert multipart.status_code == 200, multipart.text
    [result] = multipart.json()["results"]
    assert result["filename"] == "q.jpg" and len(result["neighbours"]) == 3
    assert result["neighbours"][0]["path"] == "espresso/4.jpg"
    assert raw.status_code == 200 and len(raw.json()["results"][0]["neighbours"]) == 10
    assert broken.status_code == 422 and "bad.jpg" in broken.json()["error"]["message"]


def test_server_without_an_index_says_how_to_get_one(tiny_run):
    import httpx
    from serve_utils import CAT, thread_server

    with thread_server(models=(str(tiny_run),)) as url:
        answer = httpx.post(f"{url}/v1/similar", files={"file": ("cat.jpg", CAT)}, timeout=60)

    assert answer.status_code == 404 and "--index" in answer.json()["error"]["message"]
