"""Cohorts of slides: ``nucleiseg predict`` over a list of slides, sharded over processes or SLURM array jobs.

A study is 100-1,000 slides. The list (folders, glob patterns, files, and CSV lists with a ``path`` column and
optionally ``roi``; a CSV's relative paths, of slides and of regions, are relative to the CSV's own folder) is cut
into shards; each shard is a job of the same engine training scales out with (submitit: ``slurm`` on a cluster,
``slurm_local`` for the SLURM code path on this machine, ``local_parallel`` for several processes on one node, one
per GPU when there are GPUs) or, with ``local``, a loop in this process. Every slide is predicted with its own
journal, so a pre-empted or failed job resumes where it stopped and nothing is predicted twice; each slide's
folder is locked while it is written, the cohort's folder while the cohort runs.

A slide is known by its resolved path, however the list names it: a line listed twice is one slide (a warning
names the lines), and a slide missing at one run and there at the next is predicted then. Each slide has its own
output folder ``OUT/NAME`` (``NAME``: the file's stem); slides of one name from different folders get
``OUT/NAME-<first 8 hex of the SHA-256 of the resolved path>`` each, and keep their folder from run to run. A
missing slide or region file, a damaged slide, a job that dies: each is the failure of its slides only, recorded
with the reason, and the others go on. SIGTERM or Ctrl-C stops the cohort's jobs too (exit 143 / 130); the same
command later goes on.

As slides finish, a row per slide is written to ``OUT/.cohort/rows/`` and the cohort table ``OUT/cohort.csv``
(+ ``cohort.parquet``) is rebuilt from them: one line per listed slide, its output folder, status (and the reason
of a failure), tissue area, nuclei, nuclei per mm^2 of tissue, mean and median nuclear area, seconds, model and its
SHA-256, per region with ``roi`` (:mod:`nucleiseg.predict.cohort_table`). One MLflow run per cohort (experiment
``cohorts``) holds the table and the per-slide metrics.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nucleiseg.predict.cohort_jobs import StopSignals, stop_jobs
from nucleiseg.predict.cohort_table import (
    STATE,
    CohortList,
    Entry,
    assign_folders,
    read_cohort,
    record_listing,
    record_row,
    recorded_keys,
    slide_row,
    write_table,
)
from nucleiseg.util.errors import ConfigError, first_line

if TYPE_CHECKING:
    import submitit

    from nucleiseg.inference.session import InferenceSession
    from nucleiseg.predict.slides.predict_slide import SlideSettings
    from nucleiseg.util.progress import Progress

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
    launch: str = ""  # this run of the cohort (its rows say so: a job that dies leaves its other slides failed)


def shard(entries: list[Entry], count: int) -> list[list[Entry]]:
    """``count`` shards (round robin: neighbours in a list are often similar in size); none empty."""
    count = max(1, min(count, len(entries)))
    return [entries[k::count] for k in range(count)]


def _model_hash(path: Path) -> str:
    from nucleiseg.models.zoo import file_sha256

    return file_sha256(path)


def predict_entry(
    job: CohortJob, entry: Entry, session: InferenceSession, slide_settings: SlideSettings, bars: Progress
) -> tuple[str, str]:
    """One slide into its own folder ``OUT/<entry.folder>``, locked while it is written, by the function
    ``nucleiseg predict`` writes each input with (:func:`nucleiseg.predict.run.predict_into`: the same outputs,
    journal, ``done.json`` and check of what is done already; regions give other outputs): ``(status, reason)``.
    ``predict`` itself names a slide's folder after the file; slides of one name in a cohort need folders of their
    own."""
    from nucleiseg.predict.run import outputs_fingerprint, predict_into
    from nucleiseg.util.locking import exclusive

    fingerprint = outputs_fingerprint(session, slide_settings, entry.roi)
    with exclusive(job.out / ".locks" / f"{entry.folder}.lock", f"outputs of {entry.path.name}"):
        outcome = predict_into(
            session,
            entry.path,
            job.out / entry.folder,
            fingerprint,
            slide_settings,
            bars,
            overwrite=job.overwrite,
            roi=entry.roi,
        )
    if outcome.kind == "skipped":
        return "skipped", "finished before"
    if outcome.kind == "not_written":
        return "failed", f"{job.out / entry.folder} holds outputs {outcome.why}; --overwrite replaces them"
    return "finished", ""


def run_shard(job: CohortJob, entries: list[Entry]) -> list[dict[str, Any]]:
    """Predict a shard's slides one by one (each resumable, each locked), recording a row per slide; a slide that
    fails is recorded with its reason and the shard goes on."""
    from nucleiseg.config.compose import compose
    from nucleiseg.config.settings import build, inference_settings
    from nucleiseg.inference.session import InferenceSession
    from nucleiseg.predict.model_sources import resolve_model
    from nucleiseg.predict.run import failure_reason
    from nucleiseg.util.console import setup_logging
    from nucleiseg.util.progress import Progress

    setup_logging()
    cfg = compose(job.overrides, "inference")
    settings = inference_settings(cfg)
    model_path, label = resolve_model(job.model, job.run_id, job.overrides)
    session = InferenceSession.from_checkpoint(model_path, settings, label=label)
    session.warn_if_synthetic("your slides")
    model_sha = _model_hash(model_path)
    slide_settings = build(cfg.slide, labels=job.labels)
    rows = []
    with Progress("plain") as bars:
        for entry in entries:
            started = time.perf_counter()
            try:
                status, reason = predict_entry(job, entry, session, slide_settings, bars)
            except Exception as error:  # noqa: BLE001 - one slide's failure: recorded, the shard goes on
                status, reason = "failed", failure_reason(entry.path, error)
            folder = job.out / entry.folder
            row = slide_row(folder, entry.path.name, entry.key, entry.roi, status, reason, label, model_sha)
            row["launch"] = job.launch
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
    """Predict a cohort into ``job.out`` (see the module docstring); returns the cohort table (a DataFrame).
    Raises :class:`~nucleiseg.predict.cohort_jobs.CohortStopped` on SIGTERM or SIGINT, after stopping its jobs."""
    import pandas as pd

    from nucleiseg.util.locking import exclusive

    listing = read_cohort(inputs)
    if not listing.entries and not listing.problems:
        raise ConfigError(f"no slide found in {inputs}")
    job.out.mkdir(parents=True, exist_ok=True)
    job.launch = uuid.uuid4().hex
    started = time.time()
    signals = StopSignals()
    with exclusive(job.out / LOCK, f"cohort folder {job.out}"), signals.installed():
        entries = _prepare(job.out, listing)
        try:
            if entries:
                groups = shard(entries, _shard_count(settings.shards, settings.launcher, len(entries)))
                if settings.launcher == "local":
                    for group in groups:
                        run_shard(job, group)
                else:
                    _run_jobs(job, groups, settings.launcher, settings.slurm, signals.held)
        finally:
            write_table(job.out)
    table = pd.read_csv(job.out / "cohort.csv")
    if tracking_uri:
        _log_cohort(tracking_uri, job, table, time.time() - started)
    return table


def _prepare(out: Path, listing: CohortList) -> list[Entry]:
    """Say which slides are listed more than once, give each slide its output folder, keep the list (the table is
    this list's) and record the slides that cannot be predicted as failed; returns the entries to predict."""
    from nucleiseg.predict.run import output_name

    for warning in listing.warnings:
        log.warning("%s", warning)
    folders = assign_folders(out, [(entry.key, output_name(entry.path)) for entry in listing.entries])
    entries = [replace(entry, folder=folders[entry.key]) for entry in listing.entries]
    listed = [{"path": e.key, "slide": e.path.name, "folder": e.folder} for e in entries]
    listed += [{"path": p.key, "slide": p.slide, "folder": ""} for p in listing.problems]
    record_listing(out, listed, folders)
    for problem in listing.problems:
        log.warning("%s: %s", problem.key, problem.reason)
        row = {"slide": problem.slide, "folder": "", "path": problem.key, "status": "failed", "reason": problem.reason}
        record_row(out, row, rebuild=False)
    return entries


def _run_jobs(
    job: CohortJob,
    groups: list[list[Entry]],
    launcher: str,
    slurm: dict[str, Any],
    held: Callable[[], Any],
) -> None:
    """The shards as submitit jobs (an array on SLURM); waits for them. A job that dies (killed, out of memory)
    has its unrecorded slides recorded as failed with the job's error. When this process is stopped (SIGTERM,
    Ctrl-C), the jobs are stopped too before it exits (``held``: signals wait while the jobs are submitted)."""
    gpus = 0
    if launcher == "local_parallel":
        import torch

        gpus = 1 if torch.cuda.is_available() else 0
    executor = _executor(launcher, job.out, slurm, gpus)
    jobs: list[submitit.Job] = []
    try:
        with held():
            jobs = executor.map_array(run_shard, [job] * len(groups), groups)
        log.info(
            "cohort: %d slides in %d jobs (%s), job ids %s",
            sum(map(len, groups)),
            len(jobs),
            launcher,
            ", ".join(str(j.job_id) for j in jobs),
        )
        for submitted, group in zip(jobs, groups, strict=True):
            _wait(job, submitted, group)
    except BaseException:
        stop_jobs(jobs, job.out / STATE / "jobs")
        raise


def _wait(job: CohortJob, submitted: submitit.Job, group: list[Entry]) -> None:
    """Wait for one job; if it died, its slides not recorded by this run are recorded failed, with its error."""
    try:
        submitted.result()
    except Exception as error:  # noqa: BLE001 - a dead job: its slides are recorded, the others go on
        reason = f"the job {submitted.job_id} died: {first_line(error)}"
        recorded = recorded_keys(job.out, job.launch)
        for entry in group:
            if entry.key not in recorded:
                row = {"slide": entry.path.name, "folder": entry.folder, "path": entry.key, "status": "failed"}
                record_row(job.out, {**row, "reason": reason, "launch": job.launch})


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
    for key in ("finished", "skipped", "failed", "pending"):
        metrics.append(Metric(f"slides_{key}", float(counts.get(key, 0)), now, 0))
    metrics.append(Metric("nuclei_total", float(table.nuclei.fillna(0).sum()), now, 0))
    metrics.append(Metric("wall_seconds", seconds, now, 0))
    for start in range(0, len(metrics), 900):
        client.log_batch(run_id, metrics=metrics[start : start + 900])
    client.log_artifact(run_id, str(job.out / "cohort.csv"))
    client.set_terminated(run_id, "FINISHED")  # the cohort ran; slides_failed says how many slides did not
    return run_id
