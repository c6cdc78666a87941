"""Advisory locks between processes on one machine (or a shared file system with POSIX locks): two trainings of
one run folder, or two preparations of one dataset, must not interleave. The lock dies with its process, so a
killed job never leaves a stale lock behind."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nucleiseg.util.errors import NucleisegError


class LockedError(NucleisegError):
    """Another process holds the lock."""


@contextmanager
def exclusive(lock_file: Path, what: str, wait: float = 0.0, enabled: bool = True) -> Iterator[None]:
    """Hold ``lock_file`` exclusively; if another process holds it, wait up to ``wait`` seconds, then raise
    :class:`LockedError` naming that process (``what`` says what is locked)."""
    if not enabled:
        yield
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _holder(lock_file)
                    raise LockedError(
                        f"{what} is in use by another process ({holder}); wait for it to finish"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(handle, 0)
        os.write(handle, json.dumps({"pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        yield
    finally:
        os.close(handle)  # releases the lock


def _holder(lock_file: Path) -> str:
    try:
        found = json.loads(lock_file.read_text() or "{}")
        return f"pid {found.get('pid', '?')} since {found.get('since', '?')}"
    except (OSError, json.JSONDecodeError):
        return "unknown"
