"""Cohorts of slides: ``nucleiseg predict`` over a list of slides, sharded over processes or SLURM array jobs.

A study is 100-1,000 slides. The list (a folder, a glob, or a CSV with a ``path`` column and optionally ``roi``) is
cut into shards; each shard is a job of the same engine training scales out with (submitit: ``slurm`` on a
cluster, ``slurm_local`` for the SLURM code path on this machine, ``local_parallel`` for several processes on one
node, one per GPU when there are GPUs) or, with ``local``, a loop in this process. Every slide goes through
``predict`` with its own journal, so a pre-empted or failed job resumes where it stopped and nothing is predicted
twice; each slide's folder is locked while it is written, the cohort's folder while the cohort runs.

As slides finish, a row per slide is written to ``OUT/.cohort/rows/`` and the cohort table ``OUT/cohort.csv``
(+ ``cohort.parquet``) is rebuilt from them: status (and the reason of a failure), tissue area, nuclei, nuclei per
mm^2 of tissue, mean and median nuclear area, seconds, model and its SHA-256, per region with ``roi``
(:mod:`nucleiseg.predict.cohort_table`). One MLflow run per cohort (experiment ``cohorts``) holds the table and the
per-slide metrics.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nucleiseg.predict.cohort_table import STATE, record_row, slide_row, write_table
from nucleiseg.util.errors import ConfigError, first_line

if TYPE_CHECKING:
    import submitit

log = logging.getLogger(__name__)
LAUNCHERS = ("local", "local_parallel", "slurm", "slurm_local")
LOCK = ".nucleiseg-cohort.lock"


@dataclass(frozen=True)
class CohortSettings:
    """The ``cohort`` config group (``conf/cohort/default.yaml`` holds the defaults)."""

    launcher: str  # local | local_parallel | slurm | slurm_local
    shards: int | str  # auto, or a number of jobs
    slurm: dict[str, Any]  # per job of the array: partition, gpus_per_node, cpus_per_task, mem_gb, timeout_min, ...

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"cohort.launcher={self.launcher!r}: expected one of {', '.join(LAUNCHERS)}")
        if self.shards != "auto" and (not isinstance(self.shards, int) or self.shards < 1):
            raise ConfigError(f"cohort.shards={self.shards!r}: expected auto or a whole number >= 1")
        for key in ("timeout_min", "array_parallelism", "gpus_per_node", "cpus_per_task", "mem_gb"):
            value = self.slurm.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "gpus_per_node" else 1):
                raise ConfigError(f"cohort.slurm.{key}={value!r}: expected a whole number")


@dataclass(frozen=True)
class Entry:
    """One slide of a cohort (and its regions of interest)."""

    path: Path
    roi: Path | None = None


@dataclass
class CohortJob:
    """What a shard needs to predict its slides (pickled to the job by submitit)."""

    out: Path
    model: str | None
    run_id: str | None
    overrides: list[str] = field(default_factory=list)
    overwrite: bool = False
    labels: bool = False
    logger: Any = None  # the logger config group (where MLflow keeps artifacts)


def read_cohort(inputs: list[str]) -> tuple[list[Entry], list[tuple[str, str]]]:
    """The slides named by folders, files, glob patterns and CSV lists (``path`` column, optional ``roi``; relative
    paths are relative to the CSV). Missing and duplicate slides are returned as problems, never fatal."""
    from nucleiseg.predict.run import INPUT_SUFFIXES

    entries: list[Entry] = []
    problems: list[tuple[str, str]] = []
    for word in inputs:
        path = Path(word).expanduser()
        if path.suffix.lower() == ".csv" and path.is_file():
            entries += _csv_entries(path, problems)
        elif path.is_dir():
            entries += [Entry(p) for p in sorted(path.iterdir()) if p.suffix.lower() in INPUT_SUFFIXES and p.is_file()]
        elif any(character in word for character in "*?["):
            found = sorted(Path(p) for p in glob.glob(os.path.expanduser(word), recursive=True))
            if not found:
                problems.append((word, "the pattern matches no file"))
            entries += [Entry(p) for p in found if p.is_file()]
        elif path.is_file():
            entries.append(Entry(path))
        else:
            problems.append((word, "no such file or folder"))
    unique: dict[Path, Entry] = {}
    for entry in entries:
        key = entry.path.resolve()
        if key in unique:
            problems.append((str(entry.path), "listed twice; predicted once"))
            continue
        unique[key] = entry
    return list(unique.values()), problems


def _csv_entries(path: Path, problems: list[tuple[str, str]]) -> list[Entry]:
    import pandas as pd

    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not a readable CSV list of slides ({first_line(error)})") from None
    if "path" not in table.columns:
        raise ConfigError(f"{path}: no 'path' column (found {', '.join(table.columns)}); expected path[,roi]")
    entries = []
    for row, record in enumerate(table.to_dict("records"), start=2):
        if not record["path"].strip():
            problems.append((f"{path}:{row}", "empty path"))
            continue
        slide = Path(record["path"].strip()).expanduser()
        slide = slide if slide.is_absolute() else path.parent / slide
        roi = record.get("roi", "").strip()
        roi_path = (Path(roi) if Path(roi).is_absolute() else path.parent / roi) if roi else None
        if not slide.is_file():
            problems.append((str(slide), f"no such file (row {row} of {path.name})"))
            continue
        entries.append(Entry(slide, roi_path))
    return entries


def shard(entries: list[Entry], count: int) -> list[list[Entry]]:
    """``count`` shards (round robin: neighbours in a list are often similar in size); none empty."""
    count = max(1, min(count, len(entries)))
    return [entries[k::count] for k in range(count)]


def _model_hash(path: Path) -> str:
    from nucleiseg.models.zoo import file_sha256

    return file_sha256(path)


def run_shard(job: CohortJob, entries: list[Entry]) -> list[dict[str, Any]]:
    """Predict a shard's slides one by one (each resumable, each locked), recording a row per slide; a slide that
    fails is recorded with its reason and the shard goes on."""
    from nucleiseg.config.compose import compose
    from nucleiseg.config.settings import build, inference_settings
    from nucleiseg.inference.session import InferenceSession
    from nucleiseg.predict.model_sources import resolve_model
    from nucleiseg.predict.run import predict
    from nucleiseg.util.console import setup_logging

    setup_logging()
    cfg = compose(job.overrides, "inference")
    settings = inference_settings(cfg)
    model_path, label = resolve_model(job.model, job.run_id, job.overrides)
    session = InferenceSession.from_checkpoint(model_path, settings, label=label)
    model_sha = _model_hash(model_path)
    slide_settings = build(cfg.slide, labels=job.labels)
    rows = []
    for entry in entries:
        started = time.perf_counter()
        summary = predict(
            [entry.path],
            job.out,
            session,
            overwrite=job.overwrite,
            progress="plain",
            slide_settings=slide_settings,
            roi=entry.roi,
            lock="input",
        )
        if summary.done:
            status, reason = "finished", ""
        elif summary.skipped:
            status, reason = "skipped", "finished before"
        else:
            status = "failed"
            reason = "; ".join(why for _, why in summary.failed + summary.not_written) or "not predicted"
        row = slide_row(job.out, entry.path, entry.roi, status, reason, label, model_sha)
        if status == "finished":
            row["seconds"] = row.get("seconds") or time.perf_counter() - started
        record_row(job.out, row)
        rows.append(row)
    return rows


def _shard_count(requested: int | str, launcher: str, n_slides: int) -> int:
    if requested != "auto":
        if not isinstance(requested, int) or requested < 1:
            raise ConfigError(f"cohort.shards={requested!r}: expected auto or a whole number >= 1")
        return requested
    if launcher == "local":
        return 1
    if launcher == "local_parallel":
        import torch

        return max(1, torch.cuda.device_count() or (os.cpu_count() or 2) // 2)
    return max(1, min(n_slides, 100))  # one array task per slide, up to 100


def _executor(launcher: str, out: Path, settings: dict[str, Any], gpus: int) -> submitit.Executor:
    import submitit

    folder = out / STATE / "jobs"
    if launcher == "slurm":
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        options = {k: v for k, v in settings.items() if v is not None}
        executor.update_parameters(
            timeout_min=int(options.pop("timeout_min")),
            slurm_array_parallelism=int(options.pop("array_parallelism")),
            **{f"slurm_{k}": v for k, v in options.items()},
        )
        return executor
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=int(settings["timeout_min"]), gpus_per_node=gpus)
    return executor


def run_cohort(
    job: CohortJob,
    inputs: list[str],
    settings: CohortSettings,
    tracking_uri: str | None = None,
) -> Any:
    """Predict a cohort into ``job.out`` (see the module docstring); returns the cohort table (a DataFrame)."""
    import pandas as pd

    from nucleiseg.util.locking import exclusive

    launcher = settings.launcher
    entries, problems = read_cohort(inputs)
    if not entries and not problems:
        raise ConfigError(f"no slide found in {inputs}")
    job.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with exclusive(job.out / LOCK, f"cohort folder {job.out}"):
        for name, reason in problems:
            log.warning("%s: %s", name, reason)
            record_row(job.out, {"slide": Path(name).name, "path": str(name), "status": "failed", "reason": reason})
        groups = shard(entries, _shard_count(settings.shards, launcher, len(entries))) if entries else []
        if launcher == "local":
            for group in groups:
                run_shard(job, group)
        else:
            _run_jobs(job, groups, launcher, settings.slurm)
        write_table(job.out)
    table = pd.read_csv(job.out / "cohort.csv")
    if tracking_uri:
        _log_cohort(tracking_uri, job, table, time.time() - started)
    return table


def _run_jobs(job: CohortJob, groups: list[list[Entry]], launcher: str, slurm: dict[str, Any]) -> None:
    """The shards as submitit jobs (an array on SLURM); waits for them. A job that dies (killed, out of memory)
    has its unrecorded slides recorded as failed with the job's error."""
    gpus = 0
    if launcher == "local_parallel":
        import torch

        gpus = 1 if torch.cuda.is_available() else 0
    executor = _executor(launcher, job.out, slurm, gpus)
    jobs = executor.map_array(run_shard, [job] * len(groups), groups)
    log.info(
        "cohort: %d slides in %d jobs (%s), job ids %s",
        sum(map(len, groups)),
        len(jobs),
        launcher,
        ", ".join(str(j.job_id) for j in jobs),
    )
    for submitted, group in zip(jobs, groups, strict=True):
        try:
            submitted.result()
        except Exception as error:  # noqa: BLE001 - a dead job: its slides are recorded, the others go on
            reason = f"the job {submitted.job_id} died: {first_line(error)}"
            recorded = {json.loads(p.read_text())["path"] for p in (job.out / STATE / "rows").glob("*.json")}
            for entry in group:
                if str(entry.path.resolve()) not in recorded:
                    record_row(
                        job.out,
                        {
                            "slide": entry.path.name,
                            "path": str(entry.path.resolve()),
                            "status": "failed",
                            "reason": reason,
                        },
                    )


def _log_cohort(uri: str, job: CohortJob, table: Any, seconds: float) -> str:
    """One MLflow run for the cohort: the table as an artifact, per-slide metrics (step = slide's row), totals."""
    import math

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from nucleiseg.tracking.mlflow_store import artifact_location, resolve_tracking_uri, use_experiment

    use_experiment(uri, "cohorts", artifact_location(job.logger) if job.logger else None)
    client = MlflowClient(resolve_tracking_uri(uri))
    experiment = client.get_experiment_by_name("cohorts").experiment_id
    run = client.create_run(experiment, run_name=job.out.resolve().name, tags={"out": str(job.out.resolve())})
    run_id = run.info.run_id
    client.log_param(run_id, "model", str(job.model or "default"))
    client.log_param(run_id, "overrides", " ".join(job.overrides)[:500] or "-")
    now = int(time.time() * 1000)
    metrics = []
    for step, row in enumerate(table.to_dict("records")):
        for key in ("nuclei", "nuclei_per_mm2", "tissue_mm2", "mean_area_um2", "median_area_um2", "seconds"):
            value = row.get(key)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                metrics.append(Metric(f"slide/{key}", float(value), now, step))
    counts = table.status.value_counts()
    for key in ("finished", "skipped", "failed"):
        metrics.append(Metric(f"slides_{key}", float(counts.get(key, 0)), now, 0))
    metrics.append(Metric("nuclei_total", float(table.nuclei.fillna(0).sum()), now, 0))
    metrics.append(Metric("wall_seconds", seconds, now, 0))
    for start in range(0, len(metrics), 900):
        client.log_batch(run_id, metrics=metrics[start : start + 900])
    client.log_artifact(run_id, str(job.out / "cohort.csv"))
    client.set_terminated(run_id, "FINISHED")  # the cohort ran; slides_failed says how many slides did not
    return run_id
