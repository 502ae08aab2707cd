"""What the commands print: the two consoles, and `--json` output, where stdout carries
the JSON document alone."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from rich.console import Console

__all__ = ["json_command", "print_json", "stderr", "stdout"]

stdout = Console()
stderr = Console(stderr=True)

# The documents a running --json command has handed to `print_json`.
_json_documents: ContextVar[list[Any] | None] = ContextVar("json_documents", default=None)


def json_command(command: Callable[..., None]) -> Callable[..., None]:
    """For a command with `--json` (its `json_output` parameter): stdout carries the JSON
    document alone. While the command works, anything else written to stdout, by Python
    or by C/C++ libraries on file descriptor 1 (torch's ONNX exporter prints a graph there
    when an export fails), is held back and counted in one line on stderr; the document
    given to `print_json` is printed once stdout is restored."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        if not kwargs.get("json_output"):
            return command(*args, **kwargs)
        documents: list[Any] = []
        token = _json_documents.set(documents)
        try:
            with _stdout_held_back():
                command(*args, **kwargs)
        finally:  # typer.Exit carries the exit code of a command that has its document
            _json_documents.reset(token)
            for document in documents:
                print_json(document)

    return run


def print_json(document: Any) -> None:
    """Print a --json command's document; in a `json_command`, once stdout is restored."""
    documents = _json_documents.get()
    if documents is None:
        print(json.dumps(document, ensure_ascii=False, indent=2))
    else:
        documents.append(document)


@contextlib.contextmanager
def _stdout_held_back() -> Iterator[None]:
    """Send `sys.stdout` and file descriptor 1 to a temporary file for the block; then
    restore both and say on stderr how many lines were held back. (Under typer's
    CliRunner `sys.stdout` is a buffer, not fd 1: both are held all the same.)"""
    python_stdout = sys.stdout
    python_stdout.flush()
    _flush_c_stdio()
    with tempfile.TemporaryFile() as held:
        try:
            saved_fd = os.dup(1)
        except OSError:  # no fd 1 to hold back
            saved_fd = None
        else:
            os.dup2(held.fileno(), 1)
        held_stream = open(held.fileno(), "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stdout = held_stream
        try:
            yield
        finally:
            held_stream.close()
            python_stdout.flush()  # what a library wrote to the stream it kept
            _flush_c_stdio()
            sys.stdout = python_stdout
            if saved_fd is not None:
                os.dup2(saved_fd, 1)
                os.close(saved_fd)
            held.seek(0)
            lines = len(held.read().splitlines())
            if lines:
                stderr.print(
                    f"note: a library printed {lines} line{'s' if lines > 1 else ''} to "
                    "stdout; not shown with --json",
                    highlight=False,
                    markup=False,
                    soft_wrap=True,
                )


def _flush_c_stdio() -> None:
    """Flush C's stdio buffers (printf, std::cout): to a pipe they are written only when
    full or at exit, after the block that should have held them back."""
    with contextlib.suppress(OSError, AttributeError, TypeError):  # no C library (Windows)
        ctypes.CDLL(None).fflush(None)
