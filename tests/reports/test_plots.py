"""`plots`: figures drawn without touching the caller's matplotlib (a notebook's backend,
pyplot's figure list)."""

from __future__ import annotations

from helpers import run_python

DRAW = """
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("svg")  # what a user chose before calling imgcls
from imgcls.reports import plots

out = Path(sys.argv[1])
rows = [{"epoch": e, "train_loss": 1 / e, "train_acc": 0.5, "val_loss": 1.1 / e,
         "val_acc": 0.4} for e in (1, 2)]
plots.curves(rows, out / "curves.png")
plots.lr_find([1e-4, 1e-3, 1e-2], [1.0, 0.5, 2.0], 1, out / "lr_find.png")
plots.confusion_matrix(np.array([[3, 1], [0, 4]]), ["a", "b"], out / "confusion_matrix.png")
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""


def test_drawing_leaves_the_backend_as_chosen_and_pyplot_unimported(tmp_path):
    done = run_python(DRAW, str(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["svg", "False"]
    for name in ("curves.png", "lr_find.png", "confusion_matrix.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG"), name
    assert not list(tmp_path.glob(".*.tmp"))  # written through checkpoint.atomic_write
