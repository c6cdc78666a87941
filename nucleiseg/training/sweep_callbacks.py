"""Hydra callbacks: what happens around a sweep (``python train.py -m ...``).

- Before the jobs: the MLflow store and the study's experiment are created once, so parallel jobs never race
  to create the SQLite tables, and a SQLite store is switched to WAL (readers do not block the writer).
- After each job: its result is left in its own sweep sub-folder (``on_job_end`` runs in the job's process,
  another process or machine than ``on_multirun_end`` with the joblib or SLURM launchers).
- After the sweep: one table of the jobs, the study's wall time, images/s and disk use, the medians written
  back to MLflow as summary runs, and a non-zero exit if any job failed.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from nucleiseg.tracking.summary import print_sweep_summary
from nucleiseg.util.writing import write_json_atomic

STATUS_FILE = "nucleiseg_job.json"
START_FILE = "nucleiseg_sweep.json"


def prepare_store(uri: str, study: str, artifact_location: str | None) -> None:
    """Create the store's tables and the study's experiment now (one process), WAL mode for a SQLite file."""
    from nucleiseg.tracking.mlflow_store import use_experiment

    use_experiment(uri, study, artifact_location)
    if uri.startswith("sqlite:///"):
        with sqlite3.connect(uri.removeprefix("sqlite:///"), timeout=60) as connection:
            connection.execute("PRAGMA journal_mode=WAL")


def disk_usage(paths: list[Path]) -> int:
    """Bytes of every file under ``paths``, each inode counted once (a hard-linked checkpoint is one file)."""
    seen, total = set(), 0
    for root in paths:
        if not root.exists():
            continue
        for path in root.rglob("*") if root.is_dir() else [root]:
            if path.is_file() and not path.is_symlink():
                info = path.stat()
                if (info.st_dev, info.st_ino) not in seen:
                    seen.add((info.st_dev, info.st_ino))
                    total += info.st_size
    return total


class SweepSummary(Callback):
    """Prepares the tracking store before a sweep and summarises it after (see the module docstring)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from nucleiseg.tracking.mlflow_store import artifact_location, tracking_uri

        sweep_dir = Path(config.hydra.sweep.dir)
        write_json_atomic(sweep_dir / START_FILE, {"started": time.time()})
        if not config.get("dry_run"):
            prepare_store(tracking_uri(config.logger), config.study, artifact_location(config.logger))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:  # Hydra calls this for single runs too
            return
        value = getattr(job_return, "_return_value", None)
        if not (isinstance(value, dict) and "status" in value):  # the job raised past nucleiseg.training.run.main
            value = {
                "status": "failed",
                "run": f"job {hydra_cfg.job.num}",
                "reason": str(value) if value is not None else "no result",
            }
        row = {k: v for k, v in value.items() if isinstance(v, str | int | float)}
        write_json_atomic(Path(hydra_cfg.runtime.output_dir) / STATUS_FILE, {"job": hydra_cfg.job.num, **row})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = sweep_rows(sweep_dir)
        print_sweep_summary(rows)
        from omegaconf import OmegaConf

        from nucleiseg.training.study_cost import projected_vs_actual, summarise

        launcher = OmegaConf.to_container(config.hydra.launcher, resolve=False)
        runs = [row["run"] for row in rows if row.get("run")]
        if config.get("dry_run"):
            print(summarise(config, launcher, runs))
        else:
            print(study_figures(config, rows, sweep_dir))
            compared = projected_vs_actual(config, launcher, runs, _wall_seconds(sweep_dir))
            if compared:
                print(compared)
            _write_summary_runs(config)
        failed = [row["run"] for row in rows if row["status"] == "failed"]
        if failed:
            print(
                f"{len(failed)} job(s) failed: {', '.join(failed)}; fix the cause and re-run the same command "
                "(finished runs are skipped, interrupted ones resume)"
            )
            raise SystemExit(1)


def _wall_seconds(sweep_dir: Path) -> float:
    started = sweep_dir / START_FILE
    return time.time() - json.loads(started.read_text())["started"] if started.is_file() else float("nan")


def study_figures(config: DictConfig, rows: list[dict[str, Any]], sweep_dir: Path) -> str:
    """One line: the sweep's wall time, the training images/s it achieved, and the disk the study uses."""
    started = (
        json.loads((sweep_dir / START_FILE).read_text())["started"] if (sweep_dir / START_FILE).is_file() else None
    )
    wall = time.time() - started if started else float("nan")
    trained = [row for row in rows if row["status"] == "finished"]
    images = sum(float(row.get("train_images", 0)) for row in trained)
    study_dir = Path(config.paths.output_root).expanduser().resolve() / config.study
    artifacts = Path(config.logger.artifact_location).expanduser().resolve()
    run_ids = [row["run_id"] for row in rows if row.get("run_id")]
    used = disk_usage([study_dir, *[artifacts / run_id for run_id in run_ids]])
    return (
        f"study {config.study}: {len(trained)} runs trained in {wall / 60:.1f} min wall time, "
        f"{images / wall if wall > 0 else float('nan'):.1f} training images/s over the sweep; "
        f"disk: {used / 2**30:.2f} GiB (run folders and their MLflow artifacts, hard links counted once)"
    )


def _write_summary_runs(config: DictConfig) -> None:
    from nucleiseg.tracking.mlflow_store import tracking_uri
    from nucleiseg.tracking.study import ReportError, load_runs
    from nucleiseg.tracking.summary_runs import write_summary_runs

    try:
        runs, client = load_runs(tracking_uri(config.logger), config.study)
    except ReportError:
        return
    if not runs.empty and runs.finished.any():
        write_summary_runs(client, config.study, runs)
        print(f"medians per configuration written to MLflow (experiment {config.study}, runs tagged summary=true)")


def sweep_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """The status file of every job of a sweep so far, in job order."""
    rows = [json.loads(p.read_text()) for p in sweep_dir.glob(f"*/{STATUS_FILE}")]
    return sorted(rows, key=lambda row: row.get("job", 0))


def stop_sweep(config: DictConfig, run: str, reason: str, code: int) -> None:
    """A job was killed (SIGTERM or Ctrl-C): record it, print the sweep's summary so far, write the study's summary
    runs (the killed seed counted: its MLflow run is KILLED by now) and say how to go on.
    The caller then exits with ``code``, which stops the sweep on purpose (Hydra runs no further job)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    row = {"job": hydra_cfg.job.num, "status": "killed", "run": run, "reason": reason}
    write_json_atomic(Path(hydra_cfg.runtime.output_dir) / STATUS_FILE, row)
    print_sweep_summary(sweep_rows(Path(hydra_cfg.sweep.dir)))
    # the sweep ends here, without on_multirun_end: its summary runs are written now, the killed seed counted
    from nucleiseg.tracking.pending import tracking_errors

    try:
        _write_summary_runs(config)
    except tracking_errors() as error:
        print(f"the summary runs were not written to MLflow ({error}); `nucleiseg report` writes them later")
    print(
        f"sweep stopped: {run} was {reason.split(';')[0]}; re-run the same command to go on (finished runs are "
        "skipped, interrupted ones resume)"
    )
