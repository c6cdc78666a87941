"""Progress that works in a terminal and in a log file (nohup, SLURM, ``| tee``).

On a terminal: rich progress bars. Anywhere else: plain lines, at most one every ``interval`` seconds plus the
last, each with the count, what was done, the elapsed time and an ETA, so a log shows a long job is alive.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class PlainTask:
    """Counted work reported as plain lines: ``NAME k/n WHAT, elapsed m:ss, ETA m:ss``."""

    def __init__(self, name: str, total: int, stream: TextIO, interval: float, clock: Callable[[], float]) -> None:
        self.name, self.total, self.stream, self.interval, self.clock = name, total, stream, interval, clock
        self.done, self.started, self.last_line = 0, clock(), float("-inf")

    def advance(self, count: int = 1, note: str = "") -> None:
        self.done += count
        now = self.clock()
        if now - self.last_line < self.interval and self.done < self.total:
            return
        self.last_line = now
        elapsed = now - self.started
        eta = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        detail = f" {note}" if note else ""
        eta_text = format_seconds(eta) if eta == eta else "?"
        print(
            f"{self.name} {self.done}/{self.total}{detail}, elapsed {format_seconds(elapsed)}, ETA {eta_text}",
            file=self.stream,
            flush=True,
        )


class RichTask:
    def __init__(self, progress: Any, name: str, total: int) -> None:
        self.progress, self.task = progress, progress.add_task(name, total=total)

    def advance(self, count: int = 1, note: str = "") -> None:
        self.progress.update(self.task, advance=count, note=note)


class Progress:
    """``with Progress() as progress: task = progress.task("images", 10); task.advance(note="...")``.

    ``mode``: ``auto`` (rich on a terminal, plain otherwise), ``rich``, ``plain`` or ``none``."""

    def __init__(
        self,
        mode: str = "auto",
        stream: TextIO | None = None,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "rich" if self.stream.isatty() else "plain"
        self.mode, self.interval, self.clock = mode, interval, clock
        self._rich = None

    def __enter__(self) -> Progress:
        if self.mode == "rich":
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._rich = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[note]}"),
                console=Console(file=self.stream),
            )
            self._rich.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc_info)

    def task(self, name: str, total: int) -> PlainTask | RichTask:
        if self.mode == "rich":
            return RichTask(self._rich, name, total)
        if self.mode == "plain":
            return PlainTask(name, total, self.stream, self.interval, self.clock)
        return PlainTask(name, total, _Discard(), float("inf"), self.clock)

    def remove(self, task: PlainTask | RichTask) -> None:
        if isinstance(task, RichTask):
            task.progress.remove_task(task.task)


class _Discard:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
