"""imgcls benchmark: model-only speed per backend and batch size."""

from __future__ import annotations

import json

from helpers import cli_env, run_cli


def test_benchmark_reports_speed_for_each_backend_and_batch_size(tmp_path, samples):
    result = run_cli(
        "benchmark", "efficientnet_lite0", "--batch-size", "1", "--batch-size", "3",
        "--seconds", "0.3", "--image", str(samples / "cat.jpg"), "--json",
        env=cli_env(IMGCLS_CACHE_DIR=str(tmp_path / "cache")),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["backend"], r["batch_size"]) for r in rows] == [
        ("torch", 1), ("torch", 3), ("onnx", 1), ("onnx", 3),
    ]  # fmt: skip
    for r in rows:
        assert r["precision"] == "fp32"  # what ran: bf16 fails this model's parity gate
        assert r["calls"] >= 5 and r["images_per_s"] > 0
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
