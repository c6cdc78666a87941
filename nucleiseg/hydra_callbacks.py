"""Hydra callbacks: the end-of-sweep summary, and the sweep's exit status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from nucleiseg.tracking.summary import print_sweep_summary
from nucleiseg.writing import write_json_atomic

STATUS_FILE = "nucleiseg_job.json"


class SweepSummary(Callback):
    """After a multirun, print one table of this sweep's jobs and exit non-zero if any job failed.

    Jobs of a sweep record their own failure and return (see ``nucleiseg.train.main``) so the sweep goes on.
    Each job leaves its result in its own sweep sub-folder, because with the joblib or SLURM launchers
    ``on_job_end`` runs in another process (or machine) than ``on_multirun_end``.
    """

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:  # Hydra calls this for single runs too
            return
        value = getattr(job_return, "_return_value", None)
        if not (isinstance(value, dict) and "status" in value):  # the job raised past nucleiseg.train.main
            value = {
                "status": "failed",
                "run": f"job {hydra_cfg.job.num}",
                "reason": str(value) if value is not None else "no result",
            }
        row = {k: v for k, v in value.items() if isinstance(v, str | int | float)}
        write_json_atomic(Path(hydra_cfg.runtime.output_dir) / STATUS_FILE, {"job": hydra_cfg.job.num, **row})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = [json.loads(p.read_text()) for p in sweep_dir.glob(f"*/{STATUS_FILE}")]
        rows.sort(key=lambda row: row.get("job", 0))
        print_sweep_summary(rows)
        failed = [row["run"] for row in rows if row["status"] == "failed"]
        if failed:
            print(
                f"{len(failed)} job(s) failed: {', '.join(failed)}; fix the cause and re-run the same command "
                "(finished runs are skipped, interrupted ones resume)"
            )
            raise SystemExit(1)
