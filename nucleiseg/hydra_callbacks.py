"""Hydra callbacks: the end-of-sweep summary, and the sweep's exit status."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from nucleiseg.tracking.summary import print_sweep_summary


class SweepSummary(Callback):
    """After a multirun, print one table of this sweep's jobs and exit non-zero if any job failed.

    Jobs of a sweep record their own failure and return (see ``nucleiseg.train.main``) so the sweep goes on;
    this is where the failure becomes visible in the exit code.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        value = getattr(job_return, "_return_value", None)
        if isinstance(value, dict) and "status" in value:
            self.rows.append(value)
        else:  # the job raised past nucleiseg.train.main (e.g. an interrupt)
            self.rows.append({"status": "failed", "run": f"job {config.hydra.job.num}",
                              "reason": str(value) if value is not None else "no result"})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        print_sweep_summary(self.rows)
        failed = [row["run"] for row in self.rows if row["status"] == "failed"]
        if failed:
            print(f"{len(failed)} job(s) failed: {', '.join(failed)}; fix the cause and re-run the same command "
                  "(finished runs are skipped, interrupted ones resume)")
            raise SystemExit(1)
