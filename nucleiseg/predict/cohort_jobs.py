"""Stopping a cohort's jobs: SIGTERM and Ctrl-C while a cohort runs become :class:`CohortStopped`, and every job
the cohort started is stopped before the command exits, so none is left running, orphaned (a ``local_parallel``
job's task runs in a process of its own, below submitit's controller)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from nucleiseg.util.errors import first_line

if TYPE_CHECKING:
    import submitit

log = logging.getLogger(__name__)
STOP_GRACE_SECONDS = 15.0  # a local job's controller stops its task within about a second of being interrupted


class CohortStopped(BaseException):
    """SIGTERM or SIGINT (Ctrl-C) while a cohort runs: its jobs are stopped, its table kept, and the command exits
    ``128 + signal`` (143, 130); the same command later goes on (finished slides skipped, unfinished resumed)."""

    def __init__(self, signum: int) -> None:
        self.name = signal.Signals(signum).name
        self.code = 128 + signum
        super().__init__(f"stopped by {self.name}")


class StopSignals:
    """SIGTERM and SIGINT as :class:`CohortStopped`, raised once (a second signal while the jobs are being stopped
    is ignored), or held while jobs are submitted (so that none is left unknown) and raised right after."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.holding = False

    def __call__(self, signum: int, frame: object) -> None:
        if self.received is not None:
            return
        self.received = signum
        if not self.holding:
            raise CohortStopped(signum)

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Handle SIGTERM and SIGINT in this block (signals are only caught in the main thread: elsewhere, not)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {number: signal.signal(number, self) for number in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    @contextmanager
    def held(self) -> Iterator[None]:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.received is not None:
            raise CohortStopped(self.received)


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (Linux: read from /proc; elsewhere none are found)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):  # ended meanwhile
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, below = [], [pid]
    while below:
        for child in children.get(below.pop(), []):
            found.append(child)
            below.append(child)
    return found


def _signal_job_processes(pids: set[int], folder: Path, signum: int) -> None:
    """Send ``signum`` to those of ``pids`` that still run a job of ``folder`` (their command line names it, so a
    process id taken meanwhile by another program is left alone)."""
    for pid in pids:
        try:
            if str(folder) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(pid, signum)
        except OSError:  # ended already, or no /proc here
            pass


def stop_jobs(jobs: list[submitit.Job], folder: Path) -> None:
    """Stop the cohort's jobs (submitit's job ``folder``) so that none outlives the cohort. A SLURM job is
    cancelled (``scancel``). A local job's task is interrupted (its controller then ends by itself; a controller
    that has not started its task yet is interrupted); what still runs after :data:`STOP_GRACE_SECONDS` is killed."""
    import submitit

    local = {int(j.job_id): j for j in jobs if isinstance(j, submitit.LocalJob) and str(j.job_id).isdigit()}
    tasks = {pid: set(_descendants(pid)) for pid in local}
    for submitted in jobs:
        pid = int(submitted.job_id) if submitted in local.values() else None
        try:
            if pid is not None and tasks[pid]:
                _signal_job_processes(tasks[pid], folder, signal.SIGINT)
            else:
                submitted.cancel(check=False)
        except Exception as error:  # noqa: BLE001 - the others are stopped all the same
            log.warning("could not cancel job %s: %s", submitted.job_id, first_line(error))
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while time.monotonic() < deadline and not all(j.done() for j in local.values()):
        time.sleep(0.1)
    for pid, submitted in local.items():
        running = {pid} if not submitted.done() else set()  # done() reaps a controller that has ended
        _signal_job_processes({*tasks[pid], *_descendants(pid), *running}, folder, signal.SIGKILL)
        for _ in range(50):
            if submitted.done():
                break
            time.sleep(0.02)
    if jobs:
        log.warning("cohort stopped: job(s) %s cancelled", ", ".join(str(j.job_id) for j in jobs))
