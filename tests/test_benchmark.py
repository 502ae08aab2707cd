"""imgcls benchmark: model-only speed per backend and batch size."""

from __future__ import annotations

import json
import subprocess

from conftest import cli_env, imgcls_command


def test_benchmark_reports_speed_for_each_backend_and_batch_size(tmp_path, samples):
    env = cli_env()
    env["IMGCLS_CACHE_DIR"] = str(tmp_path / "cache")
    result = subprocess.run(
        imgcls_command("benchmark", "efficientnet_lite0", "--batch-size", "1", "--batch-size",
                       "3", "--seconds", "0.3", "--image", str(samples / "cat.jpg"), "--json"),
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["backend"], r["batch_size"]) for r in rows] == [
        ("torch", 1), ("torch", 3), ("onnx", 1), ("onnx", 3),
    ]  # fmt: skip
    for r in rows:
        assert r["calls"] >= 5 and r["images_per_s"] > 0
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
