"""Training progress for logs: one plain line per epoch (a Lightning callback, apart from :mod:`nucleiseg.util.progress`
so that predicting does not import Lightning)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

import lightning as L

from nucleiseg.util.progress import format_seconds


class EpochLines(L.Callback):
    """Training progress as one plain line per epoch (``epoch k/n: loss/train ..., loss/val ..., elapsed, ETA``),
    for runs whose output goes to a file, where a progress bar prints nothing useful."""

    def __init__(self, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.clock = stream or sys.stdout, clock
        self.started: float | None = None
        self.first_epoch = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started, self.first_epoch = self.clock(), trainer.current_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self.started is None:
            return
        epoch, total = trainer.current_epoch + 1, trainer.max_epochs
        metrics = trainer.callback_metrics
        shown = ", ".join(f"{k} {float(metrics[k]):.4f}" for k in ("loss/train", "loss/val") if k in metrics)
        elapsed = self.clock() - self.started
        done = epoch - self.first_epoch
        eta = elapsed / done * (total - epoch) if done else 0.0
        print(
            f"epoch {epoch}/{total}: {shown}, elapsed {format_seconds(elapsed)}, ETA {format_seconds(eta)}",
            file=self.stream,
            flush=True,
        )
