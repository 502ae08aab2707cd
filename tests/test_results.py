"""The file `predict --output` streams to: a Parquet folder written part by part, read back
to resume; and a usage error where pyarrow is missing."""

from __future__ import annotations

import sys

import pytest

from imgcls import results
from imgcls.errors import ConfigError
from imgcls.results import ResultsFile, recorded_paths

pq = pytest.importorskip("pyarrow.parquet")

ANSWER = {
    "label": "espresso",
    "class_id": "n07920052",
    "index": 967,
    "score": 0.9,
    "unknown": False,
    "present": True,
}


def records(first: int, count: int) -> list[dict]:
    """Results as predict makes them; every third a file that failed."""
    made = []
    for i in range(first, first + count):
        if i % 3 == 2:
            made.append({"path": f"{i}.jpg", "error": {"type": "ImageError", "message": "bad"}})
        else:
            ranked = [ANSWER, {**ANSWER, "index": 1, "present": False}]
            made.append({"path": f"{i}.jpg", "predictions": ranked, "labels": ["espresso"]})
    return made


def test_parquet_parts_hold_the_records_and_a_kill_loses_only_the_part_in_hand(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(results, "PART_ROWS", 4)
    output = tmp_path / "preds.parquet"
    killed = ResultsFile(output)
    for record in records(0, 10):
        killed.write(record)
    # killed here, never closed: two whole parts, 2 results lost
    assert sorted(p.name for p in output.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert recorded_paths(output) == {f"{i}.jpg" for i in range(8)}
    with ResultsFile(output) as rerun:  # a rerun appends parts after those
        for record in records(8, 3):
            rerun.write(record)
    rows = pq.read_table(output).to_pylist()
    assert len(rows) == 11 and recorded_paths(output) == {f"{i}.jpg" for i in range(11)}
    as_written = [{k: v for k, v in row.items() if v is not None} for row in rows]
    assert sorted(as_written, key=lambda r: int(r["path"][:-4])) == records(0, 11)


def test_parquet_without_pyarrow_is_a_usage_error_that_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'imgcls\[ray\]'"):
        recorded_paths(tmp_path / "preds.parquet")
    assert recorded_paths(tmp_path / "preds.jsonl") == set()  # JSON Lines need nothing
