"""The `imgcls` Typer app, its exit codes, and the one place where a command's errors
become a message and an exit code.

Exit codes: 0 success; 1 some input failed (the rest were still processed) or an output
could not be written; 2 usage error (including a model or weights file that cannot be
loaded). Every error a command raises ends in `_Commands.invoke`: one line on stderr and
its exit code (`_exit_code`). The commands register themselves, one module each, when
`imgcls.cli` imports them.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from imgcls.cli.output import stderr
from imgcls.errors import ImageError, ImgclsError, QuantizationError, WriteError

__all__ = ["EXIT_INPUT_FAILED", "EXIT_OK", "EXIT_USAGE", "app", "main"]

EXIT_OK, EXIT_INPUT_FAILED, EXIT_USAGE = 0, 1, 2

# The first class an error is an instance of decides its exit code; an error of none of
# them is a bug, and keeps its traceback.
_EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (WriteError, EXIT_INPUT_FAILED),  # an output not written: disk full, no permission
    (ImageError, EXIT_INPUT_FAILED),  # the image a command was given does not decode
    (QuantizationError, EXIT_INPUT_FAILED),  # an int8 model its calibration images refuse
    (ImgclsError, EXIT_USAGE),  # a model, weights, data set or arguments that cannot work
    (FileNotFoundError, EXIT_USAGE),  # a model, weights or data path that is not there
    (FileExistsError, EXIT_USAGE),  # an output folder that must be new
    (OSError, EXIT_INPUT_FAILED),  # anything else the system refused
)
# The library names a function's parameters; here they are flags, under these names when
# not the parameter's with dashes.
_FLAGS = {"data": "DATA", "calibration": "--calib", "api_keys": "--api-key", "address": "--ray"}


class _Commands(TyperGroup):
    """The `imgcls` command group: where every command's errors end (see the module)."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _ray_default(args))

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:  # the commands run, and their options are parsed, in here
            code = _exit_code(exc)
            if code is None:
                raise
            stderr.print(
                f"[red]error:[/red] {escape(_message(exc))}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(code) from None


def _ray_default(args: list[str]) -> list[str]:
    """`--ray` with no ADDRESS after it means `--ray local` (typer has no options whose
    value is optional)."""
    args = list(args)
    for i in reversed(range(len(args))):
        if args[i] == "--ray" and (i + 1 == len(args) or args[i + 1].startswith("-")):
            args.insert(i + 1, "local")
    return args


def _exit_code(exc: Exception) -> int | None:
    """How an error ends a command (None: it is not one for a one-line message)."""
    if _is_usage_error(exc):
        return exc.exit_code
    if isinstance(exc, BrokenPipeError):  # stdout piped into `head`: click ends it quietly
        return None
    return next((code for kind, code in _EXIT_CODES if isinstance(exc, kind)), None)


def _is_usage_error(exc: Exception) -> bool:
    """click's own errors (a bad option value, a missing argument) carry their message and
    exit code; whichever click typer brings, they are known by those. Not the help that a
    bare command group shows (click >= 8.2 raises it as an error)."""
    return hasattr(exc, "format_message") and type(exc).__name__ != "NoArgsIsHelpError"


def _message(exc: Exception) -> str:
    """An error's message as a command line user reads it: flags for parameters."""
    if _is_usage_error(exc):
        message = exc.format_message().replace("Value error, ", "")  # pydantic's, in typer 0.29
        ctx = getattr(exc, "ctx", None)
        return f"{message} (see {ctx.command_path} --help)" if ctx is not None else message
    message = str(exc)
    for name in getattr(exc, "parameters", ()):
        message = message.replace(f"`{name}`", _FLAGS.get(name, "--" + name.replace("_", "-")))
    return message


app = typer.Typer(
    name="imgcls",
    cls=_Commands,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # click's plain help: it reads well in 80 columns
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Image classification: predict, train, evaluate, serve, export."""
    warnings.formatwarning = _warning_line


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """A warning as one line for the user (e.g. bf16 falling back to fp32), not Python's
    file, line and source text."""
    return f"warning: {message}\n"


def main() -> None:
    """The `imgcls` console script: the app, plus what ends it from outside a command
    (Ctrl-C, a package the inference-only install leaves out)."""
    try:
        app()
    except KeyboardInterrupt:
        stderr.print("interrupted")
        sys.exit(130)
    except ModuleNotFoundError as exc:  # what `pip install imgcls` leaves out for [train]
        if exc.name is None or exc.name.partition(".")[0] == "imgcls":
            raise  # a bug, not an install
        message = (
            f"this needs {exc.name}, which the inference-only install (predict and serve "
            ".onnx models) leaves out: pip install 'imgcls[train]'"
        )
        stderr.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_USAGE)
