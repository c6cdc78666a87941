"""One rich console for every table nucleiseg prints: on a terminal its width; off a terminal (a log file,
nohup, SLURM, a pipe) no wrapping at all, so lines read whole in logs and scripts can parse them. Tables carry
no titles (a title wraps mid-word in a narrow column): callers print the title as its own line."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.console import Console


def make_console(stderr: bool = False) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=10_000, soft_wrap=True, force_terminal=False, color_system=None)


class _LogFormat(logging.Formatter):
    """One line per message on stderr; warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (redirected by a caller or a test), not the one at setup."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def setup_logging() -> None:
    """nucleiseg's log lines on stderr, one per message (warnings and errors say so); once per process."""
    logger = logging.getLogger("nucleiseg")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_LogFormat())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
