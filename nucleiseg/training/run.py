"""Training entry point: ``nucleiseg.training.run.run(cfg)`` trains, validates and tests one configuration and seed.

``train.py`` at the repository root composes the Hydra config and calls :func:`main`. A run lives in
``outputs/<study>/<run name>/`` (checkpoints, ``run.json``, ``done.json``); the run name is derived from the
configuration, so re-launching the same command finds the same folder: it resumes an unfinished run into the
same MLflow run, and skips a finished one.

The stages of :func:`run`: check the configuration and the run folder (nothing is touched when a run is refused),
prepare the data once, fit, take the weights to test (last or best), tune the post-processing on validation, test
through the inference session, then keep one weights-only checkpoint (also logged to MLflow) and write
``done.json``.

This module keeps the run's lifecycle only: its objects are built by :mod:`nucleiseg.training.assemble`, its end (seal,
publish) is :mod:`nucleiseg.training.finish`, its folder and identity :mod:`nucleiseg.training.identity`.
"""

from __future__ import annotations

import json
import logging
import pickle
import signal
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from nucleiseg.config.settings import build, carried_settings
from nucleiseg.data.datamodule import NucleiDataModule
from nucleiseg.inference.session import InferenceSession, iterate_split
from nucleiseg.models.factory import configuration_label
from nucleiseg.models.lit_module import SegmentationModule
from nucleiseg.tracking.mlflow_store import artifact_location, tracking_uri
from nucleiseg.tracking.study import SUPERSEDED_TAG
from nucleiseg.training.assemble import PYTREE_NOTICE, Setup, build_logger, setup_run, validate
from nucleiseg.training.finish import FINISHING, MODEL_CHECKPOINT, publish, seal
from nucleiseg.training.identity import (
    RunFolder,
    RunRefused,
    inspect_folder,
    read_json,
    run_folder,
    run_name,
)
from nucleiseg.training.run_record import mlflow_run_to_continue
from nucleiseg.util.devices import resolve_precision
from nucleiseg.util.errors import NucleisegError, first_line
from nucleiseg.util.locking import LockedError, exclusive
from nucleiseg.util.parallel import share_cpu_threads
from nucleiseg.util.writing import write_json_atomic

log = logging.getLogger(__name__)


def _fit(
    trainer: L.Trainer,
    module: SegmentationModule,
    datamodule: NucleiDataModule,
    resume_from: Path | None,
    name: str,
) -> None:
    try:
        # weights_only=True: resuming never runs pickled code, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says
        trainer.fit(
            module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None, weights_only=True
        )
    except pickle.UnpicklingError as error:
        raise NucleisegError(
            f"{resume_from}: cannot be loaded safely to resume ({first_line(error)}); it was not written by this "
            "training, or was altered: delete it to train this run afresh"
        ) from None
    except SystemExit:
        # Lightning turns Ctrl-C into sys.exit(1) and ignores SIGINT from then on; make it an interruption
        # again (recorded by main(), resumable) and give Ctrl-C back to the user
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if trainer.interrupted:
            raise KeyboardInterrupt(f"{name} interrupted; re-run the same command to resume") from None
        raise


def _load_test_weights(cfg: DictConfig, trainer: L.Trainer, module: SegmentationModule, run: RunFolder) -> str:
    """Give ``module`` the weights ``test_checkpoint`` names: ``last`` is the model as the last epoch left it
    (in memory); ``best`` is loaded from ``best.ckpt``. Returns which."""
    if cfg.test_checkpoint == "last":
        return "last epoch"
    best = next(c for c in trainer.checkpoint_callbacks if c.monitor is not None).best_model_path
    if not best or not Path(best).is_file():
        raise NucleisegError(f"test_checkpoint=best: no best.ckpt was written in {run.path / 'checkpoints'}")
    state = torch.load(best, map_location=module.device, weights_only=True)["state_dict"]
    module.load_state_dict(state, strict=False)  # metric states and buffers not saved are kept
    return Path(best).name


def _tune(cfg: DictConfig, module: SegmentationModule, datamodule: NucleiDataModule, logger: MLFlowLogger) -> None:
    """Search the post-processing on the validation split; the best values go into the module's hparams (and
    so into the checkpoint) and into MLflow."""
    settings = build(cfg.tune)
    if not settings.enabled or not datamodule.manifest["counts"]["val"]:
        return
    from nucleiseg.evaluation.tuning import tune, tuning_metrics, tuning_tags

    inference = replace(carried_settings(cfg), device=str(module.device), compile=False)
    session = InferenceSession(module.model, dict(module.hparams), inference)
    result = tune(
        session, iterate_split(datamodule.folder, "val"), settings, float(cfg.metrics.iou_threshold), normalise=False
    )
    module.hparams.update(result.hparams("val"))
    for key, value in tuning_tags(result, "val").items():
        logger.tag(key, value)
    logger.log_metrics(tuning_metrics(result, "val"))
    module.train(False)


def _fit_tune_test(cfg: DictConfig, run: RunFolder, setup: Setup) -> tuple[dict, dict, str]:
    """Fit, load the weights to test, tune the post-processing on validation, test: ``(final epoch metrics,
    test metrics, the checkpoint tested)``."""
    trainer, module = setup.trainer, setup.module
    try:
        _fit(trainer, module, setup.datamodule, setup.resume_from, run.name)
        final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("loss/", "train/", "val/"))}
        tested = _load_test_weights(cfg, trainer, module, run)
        if trainer.is_global_zero:
            _tune(cfg, module, setup.datamodule, setup.logger)
        # a release model (data.protocol.split=none) has no held-out split: nothing to test
        results = {}
        if setup.manifest["counts"]["test"] > 0:
            results = trainer.test(module, datamodule=setup.datamodule, verbose=False)[0]
            # the test loss is kept out of Lightning's logger (it would log it at the global step): taken here
            results.update({k: v for k, v in trainer.callback_metrics.items() if k == "loss/test"})
    except torch.cuda.OutOfMemoryError:
        precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
        raise NucleisegError(
            f"CUDA out of memory training {run.name} with batch size {cfg.data.loader.batch_size} at {precision}: "
            "try a smaller data.loader.batch_size, trainer.precision=bf16-mixed (or 16-mixed), or a smaller encoder"
        ) from None
    metrics = {k: float(v) for k, v in results.items()}
    metrics.update({k: v for k, v in setup.test_pass.results.items() if isinstance(v, float | int)})
    return final, metrics, tested


def _train(cfg: DictConfig, run: RunFolder) -> dict[str, Any]:
    setup = setup_run(cfg, run)
    final, metrics, tested = _fit_tune_test(cfg, run, setup)
    if setup.trainer.is_global_zero:
        seal(cfg, run, setup, final, metrics, tested)
        return publish(cfg, run, setup.logger)
    return metrics


def _finish_sealed(cfg: DictConfig, run: RunFolder) -> dict[str, Any]:
    """A run killed after its test (sealed, not yet published): finish it in its MLflow run, no training."""
    log.info("finishing %s: trained and tested before it was stopped; publishing its results", run.name)
    from nucleiseg.tracking.mlflow_store import use_experiment

    use_experiment(tracking_uri(cfg.logger), cfg.study, artifact_location(cfg.logger))
    continued = mlflow_run_to_continue(cfg, run)
    logger = build_logger(cfg, run.name, continued, {}, run.path)
    (run.path / "failed.json").unlink(missing_ok=True)
    metrics = publish(cfg, run, logger)
    logger.finalize("success")
    return metrics


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, validate and test one configuration; return its test metrics (also written to ``done.json``)."""
    validate(cfg)
    if cfg.dry_run:
        from nucleiseg.training.study_cost import plan_run

        name, folder = run_name(cfg), run_folder(cfg)
        planned = f"dry run: would train {name} [{configuration_label(cfg.encoder, cfg.pretrained, cfg.model.head)}]"
        if not cfg.dry_run_steps:  # list the runs only
            print(f"{planned} in {folder}")
            return {}
        row = plan_run(cfg, name, steps=int(cfg.dry_run_steps))
        print(
            f"{planned} in {folder}: about {row['seconds'] / 60:.1f} min at {row['images_per_second']:.1f} training "
            f"images/s here, {row['disk_bytes'] / 1e6:.0f} MB"
        )
        return {"projected_seconds": row["seconds"]}
    run = inspect_folder(cfg)
    # rank 0 only: Lightning starts the other DDP ranks as processes that run this function again
    with exclusive(run.path / ".lock", f"run folder {run.path}", enabled=rank_zero_only.rank == 0):
        done = read_json(run.done)
        if done is not None and cfg.skip_finished:
            log.info(
                "skipping %s: finished before (MLflow run %s); skip_finished=false to retrain", run.name, done["run_id"]
            )
            return done["metrics"]
        if done is not None:  # training again on purpose: a fresh MLflow run, not a resume
            from mlflow.tracking import MlflowClient

            # the earlier run stays in MLflow for the record, out of the study's counts (one run per seed)
            MlflowClient(tracking_uri(cfg.logger)).set_tag(done["run_id"], SUPERSEDED_TAG, "true")
            run.previous = None
            run.done.unlink()
            (run.path / FINISHING).unlink(missing_ok=True)
        sealed = read_json(run.path / FINISHING)
        if (
            sealed is not None
            and sealed.get("identity") == run.identity
            and (run.path / "checkpoints" / MODEL_CHECKPOINT).is_file()
        ):
            return _finish_sealed(cfg, run)
        return _train(cfg, run)


def record_failure(cfg: DictConfig, error: BaseException, status: str = "FAILED") -> None:
    """Mark the MLflow run of ``cfg`` ``status`` (FAILED, KILLED) with the reason, and write ``failed.json``."""
    try:
        run_dir = run_folder(cfg)
        reason = f"{type(error).__name__}: {error}"[:4000]
        run_file = run_dir / "run.json"
        if (run_dir / "done.json").is_file():
            return  # a finished run is never marked failed by a later command
        if run_file.is_file():
            from mlflow.tracking import MlflowClient

            run_id = json.loads(run_file.read_text())["run_id"]
            client = MlflowClient(tracking_uri=tracking_uri(cfg.logger))
            client.set_tag(run_id, "failure_reason", reason)
            client.set_terminated(run_id, status=status)
        if run_dir.is_dir():
            write_json_atomic(run_dir / "failed.json", {"reason": reason, "status": status})
    except Exception as secondary:  # noqa: BLE001 - never hide the original error behind a logging error
        log.warning("could not record the failure in MLflow: %s", secondary)


def _is_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


class RunKilled(BaseException):
    """SIGTERM (a cluster's time limit, ``kill``): the run stops now, is recorded KILLED, and can resume later."""


def _raise_killed(signum: int, frame: Any) -> None:
    raise RunKilled(f"stopped by signal {signal.Signals(signum).name}; re-run the same command to resume")


def main(cfg: DictConfig) -> Any:
    """The Hydra task: run, and on failure record it (MLflow FAILED or KILLED + reason) before deciding what to do.

    A single run re-raises (user errors print as one line, exit code 2; SIGTERM exits 143, Ctrl-C 130). In a
    sweep a failing job is logged and the sweep goes on; the sweep summary lists it and the sweep exits non-zero
    at the end. A killed job (SIGTERM, Ctrl-C) stops the sweep on purpose: its summary so far is printed, it
    exits 143 / 130, and the same command later resumes (finished runs are skipped).
    """
    warnings.filterwarnings("ignore", message=PYTREE_NOTICE)
    previous_handler = signal.signal(signal.SIGTERM, _raise_killed)
    share_cpu_threads()
    try:
        before = time.time()
        metrics = run(cfg)
        status = "planned" if cfg.dry_run else "finished"
        done = run_folder(cfg) / "done.json"
        if done.is_file() and done.stat().st_mtime < before:
            status = "skipped"
        run_id = json.loads(done.read_text())["run_id"] if done.is_file() else ""
        return {"status": status, "run": run_name(cfg), "run_id": run_id, **metrics}
    except (KeyboardInterrupt, RunKilled) as error:
        killed = (
            error
            if isinstance(error, RunKilled)
            else RunKilled("interrupted (Ctrl-C); re-run the same command to resume")
        )
        record_failure(cfg, killed, "KILLED")
        code = 143 if isinstance(error, RunKilled) else 130
        if _is_multirun():
            from nucleiseg.training.sweep_callbacks import stop_sweep

            stop_sweep(cfg, run_name(cfg), str(killed), code)
        print(f"{run_name(cfg)}: {killed}", file=sys.stderr)
        raise SystemExit(code) from None
    except Exception as error:
        if not isinstance(error, RunRefused | LockedError):  # a refusal touches nothing
            record_failure(cfg, error)
        if _is_multirun():
            log.error("job %s failed: %s", run_name(cfg), error, exc_info=not isinstance(error, NucleisegError))
            return {"status": "failed", "run": run_name(cfg), "reason": str(error)}
        if isinstance(error, NucleisegError | FileNotFoundError):
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
