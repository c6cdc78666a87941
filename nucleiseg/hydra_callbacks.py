"""Hydra callbacks: the end-of-sweep summary, and the sweep's exit status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from nucleiseg.tracking.summary import print_sweep_summary


class SweepSummary(Callback):
    """After a multirun, print one table of every run of the study and exit non-zero if any job failed.

    Jobs of a sweep record their own failure and return (see ``nucleiseg.train.main``) so the sweep goes on;
    this is where the failure becomes visible in the exit code.
    """

    def __init__(self) -> None:
        self.failed: list[str] = []

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        value = getattr(job_return, "_return_value", None)
        if isinstance(value, dict) and value.get("status") == "failed":
            self.failed.append(value.get("run", "?"))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        study_dir = Path(config.paths.output_root).expanduser().resolve() / config.study
        print_sweep_summary(study_dir)
        if self.failed:
            print(f"{len(self.failed)} job(s) failed: {', '.join(self.failed)}; re-run the same command to retry "
                  "them (finished runs are skipped)")
            raise SystemExit(1)
