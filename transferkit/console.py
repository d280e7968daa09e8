"""Terminal output: one rich console, warnings, and progress bars for every long step."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")
console = Console(stderr=True)  # progress, warnings, errors
results = Console()  # tables and summaries a user may pipe: stdout


def quiet() -> bool:
    return os.environ.get("TRANSFERKIT_QUIET", "") not in ("", "0")


def warn(msg: str) -> None:
    # escaped: a message quoting "pip install 'transferkit[medical]'" or a file name in brackets is text, not markup
    console.print(f"[yellow]warning:[/] {escape(msg)}", highlight=False, soft_wrap=True)


def info(msg: str) -> None:
    if not quiet():
        console.print(escape(msg), highlight=False, soft_wrap=True)


def progress(disable: bool = False) -> Progress:
    """A progress display; disabled when TRANSFERKIT_QUIET is set (as in tests) or ``disable`` (processes other than
    the main one under ``accelerate launch``)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet() or disable,
        transient=False,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar."""
    with progress() as bar:
        task = bar.add_task(description, total=total if total is not None else len(items), status="")  # type: ignore[arg-type]
        for x in items:
            yield x
            bar.advance(task)
