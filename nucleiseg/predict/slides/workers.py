"""How many windows of a slide are in flight at once (``slide.workers``), sized for the model and the machine.

Several windows in flight overlap reading, the network and the separation into nuclei (the network's kernels
release the GIL while Python reads and separates), which pays for a small model. But each window in flight holds its
own activations: with a full-width U-Net (any model trained with the paper's settings) three windows peaked at 6.9 GB
against 3.2 GB for one, and on a loaded 2-core machine were slower too. ``slide.workers=auto`` therefore measures the
first window alone (how much memory one window adds at its peak) and allows as many windows as fit in
``slide.memory_gb`` beside what the process already holds, never more than the machine's free memory allows, nor
more than ``slide.max_workers``, nor more than the cores plus one. A whole number asks for exactly that many.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)
GB = 2**30
SMALLEST_WINDOW = 64 * 2**20  # a floor for the measurement: a window never costs nothing
T = TypeVar("T")


def current_rss() -> int | None:
    """This process's resident memory in bytes now (Linux); None where it cannot be read."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def peak_rss() -> int:
    """The largest resident memory this process has had, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def available_memory() -> int | None:
    """Memory the system can still give without swapping (``MemAvailable``), in bytes; None where unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class WindowFootprint:
    """What one window costs, measured on the first: memory added at its peak (bytes) and the process's memory
    before it."""

    window_bytes: int
    base_bytes: int


def measure_window(run: Callable[[], T]) -> tuple[T, WindowFootprint]:
    """Run ``run()`` (the first window, alone) and measure the memory it adds at its peak: this process's resident
    memory is sampled every few milliseconds while it runs (a network's activations live for the whole forward
    pass); where that cannot be read, the change of the lifetime peak."""
    before = current_rss()
    if before is None:
        start = peak_rss()
        result = run()
        return result, WindowFootprint(max(peak_rss() - start, SMALLEST_WINDOW), start)
    highest, stop = before, threading.Event()

    def sample() -> None:
        nonlocal highest
        while not stop.wait(0.005):
            highest = max(highest, current_rss() or 0)

    sampler = threading.Thread(target=sample, name="nucleiseg-memory", daemon=True)
    sampler.start()
    try:
        result = run()
    finally:
        stop.set()
        sampler.join()
    highest = max(highest, current_rss() or 0)
    return result, WindowFootprint(max(highest - before, SMALLEST_WINDOW), before)


def choose_workers(footprint: WindowFootprint, memory_gb: float, max_workers: int) -> tuple[int, str]:
    """``(windows in flight, why)`` for ``slide.workers=auto``."""
    budget = memory_gb * GB - footprint.base_bytes
    free = available_memory()
    if free is not None:
        budget = min(budget, 0.8 * free)
    by_memory = int(budget // footprint.window_bytes)
    cores = usable_cores()
    workers = max(1, min(by_memory, max_workers, cores + 1))
    why = (
        f"one window adds {footprint.window_bytes / GB:.2f} GB to {footprint.base_bytes / GB:.2f} GB; "
        f"budget slide.memory_gb={memory_gb:g}"
        + (f", {free / GB:.1f} GB free" if free is not None else "")
        + f"; {cores} cores; at most slide.max_workers={max_workers}"
    )
    return workers, why
