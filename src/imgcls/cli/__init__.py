"""The `imgcls` command line: `app` (the Typer app, exit codes and the one place errors
become messages: `app.py`), what commands print (`output.py`), options several commands
share (`options.py`, `on_ray.py`) and one module per command, each with its printers.

Importing the command modules registers them with `app`; `main` is the console script
(`imgcls = "imgcls.cli:main"`) and `python -m imgcls`.
"""

from imgcls.cli.app import app, main

# Each module registers its command with `app`; the order here is the order of --help.
# isort: off
from imgcls.cli import predict, evaluate, features, export, benchmark, serve  # noqa: F401
from imgcls.cli import explain, feedback, train, tune, doctor  # noqa: F401
from imgcls.cli import select, index  # noqa: F401
# isort: on

__all__ = ["app", "main"]
