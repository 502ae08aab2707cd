"""The file `imgcls predict --output` streams its results to, and what it already holds.

`FILE.jsonl`: one JSON object per line, flushed as each image is done. `FILE.parquet`: a
folder — the layout pandas, Spark and Ray read as one table — of part files, each of up to
PART_ROWS results and written whole before it takes its name. Either way a kill loses only
what was not yet written, and a rerun skips the paths the file holds.

Parquet rows hold what the JSON objects hold: `path`, `predictions` (a list of structs, the
fields of `imgcls.inference.classifier.Prediction`), `labels` (the classes the model asserts) and
`error` (`type`, `message`; null when none).
Parquet needs pyarrow, which `imgcls[ray]` brings.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgcls.errors import ConfigError
from imgcls.files import atomic_write, make_dir
from imgcls.inference.classifier import Prediction

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "PART_ROWS",
    "ResultsFile",
    "arrow_answer",
    "arrow_error",
    "arrow_prediction",
    "error_fields",
    "recorded_paths",
    "require_pyarrow",
]

PART_ROWS = 1000  # results per Parquet part: a part is what a kill can lose

_ARROW_TYPES = {"str": "string", "int": "int64", "float": "float64", "bool": "bool_"}


def arrow_prediction() -> pa.DataType:
    """A `Prediction` as an Arrow struct, field for field."""
    pa = require_pyarrow()
    fields = dataclasses.fields(Prediction)
    return pa.struct([(f.name, getattr(pa, _ARROW_TYPES[str(f.type)])()) for f in fields])


def arrow_answer() -> pa.DataType:
    """A hierarchical `answer` (imgcls.trust.hierarchy.Answer) as an Arrow struct."""
    pa = require_pyarrow()
    return pa.struct(
        [("label", pa.string()), ("probability", pa.float64()), ("path", pa.list_(pa.string()))]
    )


def arrow_error() -> pa.DataType:
    """A failed input's `error` as an Arrow struct."""
    pa = require_pyarrow()
    return pa.struct([("type", pa.string()), ("message", pa.string())])


def error_fields(exc: BaseException) -> dict[str, str]:
    """A failed input's `error`, as records and rows give it (`arrow_error`'s fields)."""
    return {"type": type(exc).__name__, "message": str(exc)}


def recorded_paths(output: str | os.PathLike) -> set[str]:
    """Paths already in an output (a JSON line torn by a kill is ignored)."""
    output = Path(output)
    if _is_parquet(output):
        require_pyarrow()
        if not output.is_dir():
            return set()
        import pyarrow.dataset as ds

        table = ds.dataset(output, format="parquet").to_table(columns=["path"])
        return set(table["path"].to_pylist())
    if not output.is_file():
        return set()
    done = set()
    for line in output.read_text(encoding="utf-8").splitlines():
        try:
            done.add(json.loads(line)["path"])
        except (ValueError, KeyError, TypeError):
            continue
    return done


class ResultsFile:
    """Appends results (the JSON objects of `imgcls predict`) to a JSON Lines file or a
    Parquet folder, as the module says. Use it as a context manager."""

    def __init__(self, output: str | os.PathLike) -> None:
        self.output = Path(output)
        self.parquet = _is_parquet(self.output)
        self.pending: list[dict[str, Any]] = []
        if self.parquet:
            pa = require_pyarrow()
            self.schema = pa.schema(
                [
                    ("path", pa.string()),
                    ("predictions", pa.list_(arrow_prediction())),
                    ("labels", pa.list_(pa.string())),
                    ("prediction_set", pa.list_(pa.string())),  # null without --coverage
                    ("answer", arrow_answer()),  # null without a taxonomy
                    ("error", arrow_error()),
                ]
            )
            make_dir(self.output)
            self.next_part = len(list(self.output.glob("part-*.parquet")))
        else:
            self.sink = open(self.output, "a", encoding="utf-8")  # noqa: SIM115
            if self.sink.tell() and not self.output.read_bytes().endswith(b"\n"):
                self.sink.write("\n")  # end a line torn by a kill, so the next stands alone

    def write(self, record: dict[str, Any]) -> None:
        if not self.parquet:  # one line per image as it is done: a kill loses none
            self.sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.sink.flush()
            return
        self.pending.append(record)
        if len(self.pending) >= PART_ROWS:
            self._write_part()

    def close(self) -> None:
        if not self.parquet:
            self.sink.close()
        elif self.pending:
            self._write_part()

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _write_part(self) -> None:
        import pyarrow.parquet as pq

        table = require_pyarrow().Table.from_pylist(self.pending, schema=self.schema)
        path = self.output / f"part-{self.next_part:05d}.parquet"
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))
        self.next_part += 1
        self.pending = []


def _is_parquet(output: Path) -> bool:
    return output.suffix.lower() == ".parquet"


def require_pyarrow():
    """pyarrow, or a message that says how to get it."""
    try:
        import pyarrow
    except ModuleNotFoundError:
        raise ConfigError(
            "Parquet files need pyarrow: pip install 'imgcls[ray]' (or write .jsonl or .npz)"
        ) from None
    return pyarrow
