"""Training entry point: ``nucleiseg.train.run(cfg)`` trains, validates and tests one configuration and seed.

``train.py`` at the repository root composes the Hydra config and calls :func:`main`. A run lives in
``outputs/<study>/<run name>/`` (checkpoints, ``run.json``, ``done.json``); the run name is derived from the
configuration, so re-launching the same command finds the same folder: it resumes an unfinished run into the
same MLflow run, and skips a finished one.

The stages of :func:`run`: check the configuration and the run folder (nothing is touched when a run is refused),
prepare the data once, fit, take the weights to test (last or best), tune the post-processing on validation, test
through the inference session, then keep one weights-only checkpoint (also logged to MLflow) and write
``done.json``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from nucleiseg.data.datamodule import NucleiDataModule
from nucleiseg.data.online_augment import OnlineAugment
from nucleiseg.data.prepare import load_manifest, prepare_dataset, prepared_path, training_resolution
from nucleiseg.devices import cuda_available, device_name, resolve_flag, resolve_precision
from nucleiseg.errors import ConfigError, NucleisegError
from nucleiseg.inference.checkpoint import plain, write_model_checkpoint
from nucleiseg.inference.session import InferenceSession, InferenceSettings, iterate_split
from nucleiseg.inference.test_pass import SessionTestPass
from nucleiseg.model_card import model_card
from nucleiseg.models.factory import check_configuration, check_head, configuration_label
from nucleiseg.models.lit_module import SegmentationModule
from nucleiseg.models.weights import check_imagenet_weights
from nucleiseg.postprocess.instances import Postprocess
from nucleiseg.progress import EpochLines
from nucleiseg.run_identity import identity_hash, run_folder, run_name
from nucleiseg.tracking.mlflow_store import flatten, git_commit, resolve_artifact_location, tracking_uri
from nucleiseg.tracking.summary import print_run_summary
from nucleiseg.writing import write_bytes_atomic, write_json_atomic

log = logging.getLogger(__name__)
MODEL_CHECKPOINT = "model.ckpt"


class RunRefused(ConfigError):
    """The run folder holds a run this command must not touch (another configuration, or one in progress)."""


def validate(cfg: DictConfig) -> None:
    """Fail before any work on an invalid configuration (bad names, bad combinations, bad values)."""
    spec = check_configuration(cfg.encoder, cfg.pretrained)
    check_head(cfg.model.head)
    if cfg.model.unet_widths and spec.smp_name is not None:
        raise ConfigError(f"model.unet_widths applies to the plain U-Nets only, not to encoder={cfg.encoder}")
    if cfg.pretrained and not cfg.dry_run:
        check_imagenet_weights(spec.smp_name, cfg.model.weights_dir)
    resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    resolve_flag(cfg.model.channels_last, cfg.trainer.accelerator, "model.channels_last")
    resolve_flag(cfg.data.loader.pin_memory, cfg.trainer.accelerator, "data.loader.pin_memory")
    Postprocess.from_mapping(cfg.postprocess).resolved(cfg.model.head)
    InferenceSettings.from_config(cfg)
    choices = {"test_checkpoint": ("last", "best"), "progress_bar": ("auto", "rich", "plain", "none")}
    for key, allowed in choices.items():
        if cfg[key] not in allowed:
            raise ConfigError(f"{key}={cfg[key]!r}: expected one of {allowed}")
    for key, low in (("trainer.max_epochs", 1), ("data.loader.batch_size", 1), ("data.protocol.image_size", 32)):
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"{key}={value!r}: expected a whole number >= {low}")
    divisor = 2 ** (len(cfg.model.unet_widths or [0] * 5) - 1) if spec.smp_name is None else 32
    if cfg.data.protocol.image_size % divisor:
        raise ConfigError(
            f"data.protocol.image_size={cfg.data.protocol.image_size}: expected a multiple of {divisor} "
            f"for encoder={cfg.encoder}"
        )
    if not isinstance(cfg.optimizer.lr, float | int) or not cfg.optimizer.lr > 0:
        raise ConfigError(f"optimizer.lr={cfg.optimizer.lr!r}: expected a positive number")


@dataclass
class RunFolder:
    """A run's name, folder and identity, and what an earlier session left there."""

    name: str
    path: Path
    identity: str
    previous: dict | None  # run.json of an earlier session

    @property
    def done(self) -> Path:
        return self.path / "done.json"

    @property
    def run_file(self) -> Path:
        return self.path / "run.json"


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunRefused(f"{path}: not readable as JSON ({error}); move it away to start this run afresh") from None


def inspect_folder(cfg: DictConfig) -> RunFolder:
    """Name, folder and identity of ``cfg``'s run; refuses (touching nothing) a folder of another configuration."""
    folder = RunFolder(run_name(cfg), run_folder(cfg), identity_hash(cfg), None)
    folder.previous = _read_json(folder.run_file)
    if folder.previous is not None and folder.previous.get("identity") != folder.identity:
        found = str(folder.previous.get("identity"))[:10]
        raise RunRefused(
            f"{folder.path} holds a run of another configuration (identity {found}, now {folder.identity[:10]}); "
            "use another study=NAME or remove that folder"
        )
    return folder


def _gpu_for_job(cfg: DictConfig) -> dict[str, Any]:
    """Under a parallel launcher, job k of a sweep trains on GPU k mod (number of GPUs)."""
    if not cfg.gpu_per_job or not torch.cuda.is_available():
        return {}
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
    except ValueError:
        return {}
    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    if cfg.gpu_per_job == "auto" and "joblib" not in launcher.lower():
        return {}
    return {"devices": [int(hydra_cfg.job.num) % torch.cuda.device_count()]}


def _trainer_extras(cfg: DictConfig) -> dict[str, Any]:
    """SyncBatchNorm exists only for CUDA; DDP on CPU (gloo) keeps per-process BatchNorm statistics."""
    extras = _gpu_for_job(cfg)
    if bool(cfg.trainer.get("sync_batchnorm", False)) and not cuda_available(cfg.trainer.accelerator):
        log.info("trainer.sync_batchnorm=true needs CUDA; running with per-process BatchNorm on CPU")
        extras["sync_batchnorm"] = False
    return extras


def _logger(cfg: DictConfig, name: str, run_id: str | None, tags: dict[str, str]) -> MLFlowLogger:
    return MLFlowLogger(
        experiment_name=cfg.study,
        run_name=name,
        tracking_uri=tracking_uri(cfg.logger),
        tags=tags,
        artifact_location=resolve_artifact_location(cfg.logger.artifact_location),
        run_id=run_id,
        log_model=False,
    )


def _tags(cfg: DictConfig, manifest: dict, data_folder: Path, accelerator: str) -> dict[str, str]:
    return {
        "study": cfg.study,
        "encoder": cfg.encoder,
        "pretrained": str(cfg.pretrained).lower(),
        "seed": str(cfg.seed),
        "head": cfg.model.head,
        "configuration": configuration_label(cfg.encoder, cfg.pretrained),
        "git_commit": git_commit(Path(__file__).parent),
        "data_manifest_hash": manifest["content_hash"],
        "data_name": manifest["name"],
        "data_folder": str(data_folder.resolve()),
        "device": device_name(accelerator),
    }


def _data_info(cfg: DictConfig, manifest: dict, data_folder: Path) -> dict[str, Any]:
    """What a checkpoint records of its training data: evaluate finds the split, predict the resolution."""
    return {
        "name": manifest["name"],
        "folder": str(data_folder.resolve()),
        "manifest_hash": manifest["content_hash"],
        "synthetic": "synthetic" in (cfg.data.sources or {}),
        "image_size": int(cfg.data.protocol.image_size),
        "test_dataset": cfg.data.protocol.test_dataset,
        "counts": manifest["counts"],
        **training_resolution(manifest, plain(cfg.data.sources)),
    }


def build_module(cfg: DictConfig, manifest: dict, data_folder: Path, accelerator: str) -> SegmentationModule:
    module = SegmentationModule(
        encoder=cfg.encoder,
        pretrained=cfg.pretrained,
        smooth=cfg.loss.smooth,
        threshold=cfg.threshold,
        optimizer=instantiate(cfg.optimizer),
        weights_dir=cfg.model.weights_dir,
        channels_last=resolve_flag(cfg.model.channels_last, accelerator, "model.channels_last"),
        stain=manifest.get("stain"),
        head=cfg.model.head,
        distance_weight=float(cfg.loss.distance_weight),
        unet_widths=plain(cfg.model.unet_widths),
        postprocess=Postprocess.from_mapping(cfg.postprocess).resolved(cfg.model.head).as_dict(),
        data=_data_info(cfg, manifest, data_folder),
    )
    if cfg.model.compile:
        # in place (nn.Module.compile), so state_dict keys and checkpoints are the same as without it
        module.model.compile()
    return module


def build_datamodule(cfg: DictConfig, data_folder: Path, accelerator: str) -> NucleiDataModule:
    loader, online = cfg.data.loader, cfg.data.get("online_augment")
    return NucleiDataModule(
        data_folder,
        batch_size=loader.batch_size,
        num_workers=loader.num_workers,
        pin_memory=resolve_flag(loader.pin_memory, accelerator, "data.loader.pin_memory"),
        persistent_workers=bool(loader.persistent_workers),
        online_augment=OnlineAugment(online) if online and online.get("enabled") else None,
        distance_targets=cfg.model.head == "distance",
    )


def training_callbacks(cfg: DictConfig, run_path: Path, has_val: bool, *extra: L.Callback) -> list[L.Callback]:
    """The checkpoint callback first (last.ckpt for resume, best.ckpt by validation loss), then ``extra``, then
    progress: rich bars on a terminal, one plain line per epoch in logs and files (``progress_bar``)."""
    checkpoint = ModelCheckpoint(
        dirpath=run_path / "checkpoints",
        filename="best",
        monitor="val/loss" if has_val else "train/loss",
        mode="min",
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    callbacks: list[L.Callback] = [checkpoint, *extra]
    mode = cfg.progress_bar
    if mode == "auto":
        mode = "rich" if sys.stdout.isatty() else "plain"
    if mode == "rich":
        callbacks.append(RichProgressBar())
    elif mode == "plain":
        callbacks.append(EpochLines())
    return callbacks


def build_trainer(cfg: DictConfig, run_path: Path, logger, callbacks: list[L.Callback]) -> L.Trainer:
    """The Lightning Trainer of ``cfg.trainer`` with the project's precision, callbacks and device choices."""
    return instantiate(
        cfg.trainer,
        precision=resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator),
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(run_path),
        enable_progress_bar=any(isinstance(c, RichProgressBar) for c in callbacks),
        _convert_="partial",
        **_trainer_extras(cfg),
    )


def _test_pass(cfg: DictConfig, logger: MLFlowLogger) -> SessionTestPass:
    speed = None
    if cfg.speed.enabled:
        speed = {
            "image_size": int(cfg.speed.image_size or cfg.data.protocol.image_size),
            "batch_size": int(cfg.speed.batch_size),
            "warmup": int(cfg.speed.warmup),
            "iterations": int(cfg.speed.iterations),
        }
    return SessionTestPass(
        InferenceSettings.from_config(cfg),
        iou_threshold=float(cfg.metrics.iou_threshold),
        speed=speed,
        overlays=int(cfg.logger.overlays),
        log_artifact=lambda path, folder: logger.experiment.log_artifact(logger.run_id, str(path), folder),
    )


def _start_logging(cfg: DictConfig, run: RunFolder, logger: MLFlowLogger, manifest: dict, resuming: bool) -> None:
    """Rank 0: the run folder's ``run.json`` and, for a new MLflow run, its params and config artifacts."""
    run.path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run.run_file, {"run_id": logger.run_id, "identity": run.identity, "name": run.name})
    (run.path / "failed.json").unlink(missing_ok=True)  # an earlier failure is history once the run goes on
    if resuming:
        log.info("resuming %s into MLflow run %s", run.name, logger.run_id)
        return
    resolved = OmegaConf.to_container(cfg, resolve=True)
    logger.log_hyperparams(flatten(resolved))
    logger.experiment.log_dict(logger.run_id, resolved, "config.yaml")
    logger.experiment.log_dict(logger.run_id, manifest, "data_manifest.json")


def _fit(trainer: L.Trainer, module, datamodule, resume_from: Path | None, name: str) -> None:
    import signal

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)
    except SystemExit:
        # Lightning turns Ctrl-C into sys.exit(1) and ignores SIGINT from then on; make it an interruption
        # again (recorded by main(), resumable) and give Ctrl-C back to the user
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if trainer.interrupted:
            raise KeyboardInterrupt(f"{name} interrupted; re-run the same command to resume") from None
        raise


def _load_test_weights(
    cfg: DictConfig, module: SegmentationModule, checkpoint: ModelCheckpoint, run: RunFolder
) -> Path:
    path = checkpoint.best_model_path if cfg.test_checkpoint == "best" else checkpoint.last_model_path
    if not path or not Path(path).is_file():
        raise NucleisegError(
            f"test_checkpoint={cfg.test_checkpoint}: no such checkpoint was written in {run.path / 'checkpoints'}"
        )
    state = torch.load(path, map_location=module.device, weights_only=True)["state_dict"]
    module.load_state_dict(state, strict=False)  # metric states and buffers not saved are kept
    return Path(path)


def _tune(cfg: DictConfig, module: SegmentationModule, datamodule: NucleiDataModule, logger: MLFlowLogger) -> None:
    """Search the post-processing on the validation split; the best values go into the module's hparams (and
    so into the checkpoint) and into MLflow."""
    if not cfg.tune.enabled or not datamodule.manifest["counts"]["val"]:
        return
    from nucleiseg.postprocess.tuning import record_tuning, tune

    settings = replace(InferenceSettings.from_config(cfg), device=str(module.device), compile=False)
    session = InferenceSession(module.model, dict(module.hparams), settings)
    grid = plain(cfg.tune.grid.get(session.postprocess.method) or {})
    result = tune(
        session,
        iterate_split(datamodule.folder, "val"),
        grid,
        cfg.tune.objective,
        float(cfg.metrics.iou_threshold),
        normalise=False,
    )
    module.hparams.update(result.hparams("val"))
    record_tuning(logger.experiment, logger.run_id, result)
    module.train(False)


def _keep_one_checkpoint(cfg: DictConfig, run: RunFolder, module: SegmentationModule, logger: MLFlowLogger) -> Path:
    """Write the weights-only ``model.ckpt`` (tuned values included), log it to MLflow, drop the training ones."""
    module.hparams["mlflow_run_id"] = logger.run_id
    path = write_model_checkpoint(run.path / "checkpoints" / MODEL_CHECKPOINT, module.model, module.hparams)
    logger.experiment.log_artifact(logger.run_id, str(path), "checkpoint")
    if not cfg.keep_training_checkpoints:
        for name in ("last.ckpt", "best.ckpt"):  # (MODEL_CARD.md and model.ckpt stay)
            (run.path / "checkpoints" / name).unlink(missing_ok=True)
    return path


def _train(cfg: DictConfig, run: RunFolder) -> dict[str, Any]:
    accelerator = cfg.trainer.accelerator
    precision = resolve_precision(cfg.trainer.precision, accelerator)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # under DDP every rank runs this function; only rank 0 prepares data and writes the run's files. The other
    # ranks are started by Lightning inside trainer.fit, after rank 0 has done both.
    is_rank_zero = rank_zero_only.rank == 0
    data_folder = prepare_dataset(cfg.data, log=log.info) if is_rank_zero else prepared_path(cfg.data)
    manifest = load_manifest(data_folder)
    datamodule = build_datamodule(cfg, data_folder, accelerator)
    module = build_module(cfg, manifest, data_folder, accelerator)
    resume_from = run.path / "checkpoints" / "last.ckpt"
    resuming = bool(cfg.resume) and run.previous is not None and resume_from.is_file()
    logger = _logger(
        cfg, run.name, run.previous["run_id"] if resuming else None, _tags(cfg, manifest, data_folder, accelerator)
    )
    if is_rank_zero:
        _start_logging(cfg, run, logger, manifest, resuming)
    test_pass = _test_pass(cfg, logger)
    callbacks = training_callbacks(cfg, run.path, manifest["counts"]["val"] > 0, test_pass)
    trainer = build_trainer(cfg, run.path, logger, callbacks)
    started = time.perf_counter()
    try:
        _fit(trainer, module, datamodule, resume_from if resuming else None, run.name)
        final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
        test_path = _load_test_weights(cfg, module, callbacks[0], run)
        if trainer.is_global_zero:
            _tune(cfg, module, datamodule, logger)
        # a release model (data.protocol.split=none) has no held-out split: nothing to test
        has_test = manifest["counts"]["test"] > 0
        results = trainer.test(module, datamodule=datamodule, verbose=False)[0] if has_test else {}
    except torch.cuda.OutOfMemoryError:
        raise NucleisegError(
            f"CUDA out of memory training {run.name} with batch size {cfg.data.loader.batch_size} at {precision}: "
            "try a smaller data.loader.batch_size, trainer.precision=bf16-mixed (or 16-mixed), or a smaller encoder"
        ) from None
    metrics = {k: float(v) for k, v in results.items()}
    if not trainer.is_global_zero:
        return metrics
    metrics.update({k: v for k, v in test_pass.results.items() if isinstance(v, float | int)})
    metrics["train_seconds"] = time.perf_counter() - started
    logger.log_metrics(metrics)
    speed = test_pass.results.get("speed") or {}
    for key in ("image_size", "batch_size", "precision", "device"):
        if key in speed:
            logger.experiment.set_tag(logger.run_id, f"speed.{key}", str(speed[key]))
    model_path = _keep_one_checkpoint(cfg, run, module, logger)
    card = run.path / "checkpoints" / "MODEL_CARD.md"
    write_bytes_atomic(card, model_card(dict(module.hparams), metrics, final, run.name).encode())
    logger.experiment.log_artifact(logger.run_id, str(card), "checkpoint")
    logger.experiment.set_tag(logger.run_id, "checkpoint", str(model_path))
    write_json_atomic(
        run.done,
        {
            "run_id": logger.run_id,
            "name": run.name,
            "identity": run.identity,
            "metrics": metrics,
            "final_epoch_metrics": final,
            "tested_weights": cfg.test_checkpoint,
            "tested_from": test_path.name,
            "test_checkpoint": str(model_path),
        },
    )
    print_run_summary(run.name, cfg, metrics, final, run.path, logger.run_id)
    return metrics


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, validate and test one configuration; return its test metrics (also written to ``done.json``)."""
    validate(cfg)
    if cfg.dry_run:
        name, folder = run_name(cfg), run_folder(cfg)
        print(f"dry run: would train {name} [{configuration_label(cfg.encoder, cfg.pretrained)}] in {folder}")
        return {}
    run = inspect_folder(cfg)
    done = _read_json(run.done)
    if done is not None and cfg.skip_finished:
        log.info(
            "skipping %s: finished before (MLflow run %s); skip_finished=false to train again", run.name, done["run_id"]
        )
        return done["metrics"]
    if done is not None:  # training again on purpose: a fresh MLflow run, not a resume
        run.previous = None
        run.done.unlink()
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


def main(cfg: DictConfig) -> Any:
    """The Hydra task: run, and on failure record it (MLflow FAILED + reason) before deciding what to do.

    A single run re-raises (user errors print as one line, exit code 2). In a sweep the failure is logged and
    the sweep goes on with the next job; the sweep summary lists it and the sweep exits non-zero at the end.
    """
    try:
        before = time.time()
        metrics = run(cfg)
        status = "planned" if cfg.dry_run else "finished"
        done = run_folder(cfg) / "done.json"
        if done.is_file() and done.stat().st_mtime < before:
            status = "skipped"
        return {"status": status, "run": run_name(cfg), **metrics}
    except KeyboardInterrupt:
        record_failure(cfg, KeyboardInterrupt("interrupted; re-run the same command to resume"), "KILLED")
        raise
    except Exception as error:
        if not isinstance(error, RunRefused):
            record_failure(cfg, error)
        if _is_multirun():
            log.error("job %s failed: %s", run_name(cfg), error, exc_info=not isinstance(error, NucleisegError))
            return {"status": "failed", "run": run_name(cfg), "reason": str(error)}
        if isinstance(error, NucleisegError | FileNotFoundError):
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
