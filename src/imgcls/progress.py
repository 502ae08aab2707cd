"""The one progress bar of imgcls: rich, on stderr, gone when done, silent off a terminal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

__all__ = ["ProgressBar"]

_stderr = Console(stderr=True)


class ProgressBar:
    """A bar for work longer than a glance: `with ProgressBar(n, "checking images") as
    advance:` then `advance()` a step (`advance(k)`: k steps; `stats=`: the text after the
    count, with `stats=True`). Shown only when `enabled` and `console` is a terminal."""

    def __init__(
        self,
        total: int,
        description: str,
        *,
        enabled: bool = True,
        console: Console | None = None,
        stats: bool = False,
    ) -> None:
        console = console or _stderr
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
        if stats:  # e.g. training's "loss 0.4123 acc 0.871 212 img/s"
            columns.append(TextColumn("{task.fields[stats]}"))
        self.bar = Progress(
            *columns,
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not (enabled and console.is_terminal),
        )
        self.task = self.bar.add_task(description, total=total, stats="")

    def __enter__(self) -> Callable[..., None]:
        self.bar.start()
        return self.advance

    def __exit__(self, *exc_info: Any) -> None:
        self.bar.stop()

    def advance(self, steps: int = 1, stats: str | None = None) -> None:
        """`steps` more done; `stats` replaces the text after the count."""
        fields = {} if stats is None else {"stats": stats}
        self.bar.update(self.task, advance=steps, **fields)

    def set_total(self, total: int) -> None:
        """The number of steps, once it is known (the bar starts with 0 when it is not)."""
        self.bar.update(self.task, total=total)
