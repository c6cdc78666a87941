"""One rich console for every table nucleiseg prints: on a terminal its width; off a terminal (a log file,
nohup, SLURM, a pipe) no wrapping at all, so lines read whole in logs and scripts can parse them. Tables carry
no titles (a title wraps mid-word in a narrow column): callers print the title as its own line."""

from __future__ import annotations

import sys

from rich.console import Console


def make_console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=10_000, soft_wrap=True, force_terminal=False, color_system=None)
