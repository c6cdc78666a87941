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

import functools
import json
import logging
import os
import pickle
import signal
import sys
import time
import warnings
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
from nucleiseg.errors import ConfigError, NucleisegError, first_line
from nucleiseg.inference.checkpoint import write_model_checkpoint
from nucleiseg.inference.held_out_pass import SessionTestPass
from nucleiseg.inference.session import InferenceSession, InferenceSettings, iterate_split
from nucleiseg.locking import LockedError, exclusive
from nucleiseg.model_card import model_card
from nucleiseg.models.factory import check_configuration, check_head, configuration_label
from nucleiseg.models.lit_module import SegmentationModule
from nucleiseg.models.weights import check_imagenet_weights
from nucleiseg.parallel import share_cpu_threads
from nucleiseg.plain import plain
from nucleiseg.postprocess.instances import Postprocess
from nucleiseg.progress import EpochLines
from nucleiseg.protocol import differences_from_paper
from nucleiseg.run_identity import configuration_hash, identity_hash, run_folder, run_name, variant_label
from nucleiseg.tracking.mlflow_store import artifact_location, flatten, git_commit, tracking_uri
from nucleiseg.tracking.pending import Pending, resilient_logger, tracking_errors
from nucleiseg.tracking.study import DONE_TAG, SUPERSEDED_TAG
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
    from nucleiseg.config_checks import BOOLEANS, CHOICES, RANGES, WHOLE_AT_LEAST, check_value

    for key in (*CHOICES, *BOOLEANS, *RANGES, *WHOLE_AT_LEAST):
        problem = check_value(key, OmegaConf.select(cfg, key))
        if problem:
            raise ConfigError(problem)
    divisor = 2 ** (len(cfg.model.unet_widths or [0] * 5) - 1) if spec.smp_name is None else 32
    if cfg.data.protocol.image_size % divisor:
        raise ConfigError(
            f"data.protocol.image_size={cfg.data.protocol.image_size}: expected a multiple of {divisor} "
            f"for encoder={cfg.encoder}"
        )


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
    if cfg.gpu_per_job == "auto" and "joblib" not in launcher.lower():  # hydra/launcher=local_parallel
        return {}
    return {"devices": [int(hydra_cfg.job.num) % torch.cuda.device_count()]}


def _trainer_extras(cfg: DictConfig) -> dict[str, Any]:
    """SyncBatchNorm exists only for CUDA; DDP on CPU (gloo) keeps per-process BatchNorm statistics."""
    extras = _gpu_for_job(cfg)
    if bool(cfg.trainer.get("sync_batchnorm", False)) and not cuda_available(cfg.trainer.accelerator):
        log.info("trainer.sync_batchnorm=true needs CUDA; running with per-process BatchNorm on CPU")
        extras["sync_batchnorm"] = False
    return extras


def _logger(cfg: DictConfig, name: str, run_id: str | None, tags: dict[str, str], run_dir: Path) -> MLFlowLogger:
    """Lightning's MLflow logger, resilient: writes the server does not take wait in the run folder for
    ``nucleiseg relog`` (see :mod:`nucleiseg.tracking.pending`)."""
    return resilient_logger(
        Pending(run_dir),
        experiment_name=cfg.study,
        run_name=name,
        tracking_uri=tracking_uri(cfg.logger),
        tags=tags,
        artifact_location=artifact_location(cfg.logger),
        run_id=run_id,
        log_model=False,
    )


def _tags(cfg: DictConfig, manifest: dict, data_folder: Path, accelerator: str) -> dict[str, str]:
    differences = differences_from_paper(cfg)
    return {
        "protocol": "custom" if differences else "paper",
        "protocol_differences": "; ".join(differences)[:4900],
        "data_split": f"{cfg.data.protocol.split}-seed{cfg.data.protocol.seed}",
        "study": cfg.study,
        "encoder": cfg.encoder,
        "pretrained": str(cfg.pretrained).lower(),
        "seed": str(cfg.seed),
        "head": cfg.model.head,
        "configuration": configuration_label(cfg.encoder, cfg.pretrained),
        "configuration_hash": configuration_hash(cfg),
        "variant": variant_label(cfg),
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
    optimizer = instantiate(cfg.optimizer)
    if cfg.optimizer.get("fused") is None and cuda_available(accelerator):
        # the same Adam in fused CUDA kernels: one launch per step instead of several per parameter group
        optimizer = functools.partial(optimizer, fused=True)
    module = SegmentationModule(
        encoder=cfg.encoder,
        pretrained=cfg.pretrained,
        smooth=cfg.loss.smooth,
        threshold=cfg.threshold,
        optimizer=optimizer,
        weights_dir=cfg.model.weights_dir,
        channels_last=resolve_flag(cfg.model.channels_last, accelerator, "model.channels_last"),
        stain=manifest.get("stain"),
        head=cfg.model.head,
        distance_weight=float(cfg.loss.distance_weight),
        unet_widths=plain(cfg.model.unet_widths),
        postprocess=Postprocess.from_mapping(cfg.postprocess).resolved(cfg.model.head).as_dict(),
        data=_data_info(cfg, manifest, data_folder),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
    )
    if cfg.model.compile:
        # in place (nn.Module.compile), so state_dict keys and checkpoints are the same as without it
        module.model.compile()
    return module


def build_datamodule(cfg: DictConfig, data_folder: Path, accelerator: str) -> NucleiDataModule:
    loader, online = cfg.data.loader, cfg.data.get("online_augment")
    on_device = resolve_flag(loader.on_device, accelerator, "data.loader.on_device")
    return NucleiDataModule(
        data_folder,
        batch_size=loader.batch_size,
        num_workers=0 if on_device else loader.num_workers,
        pin_memory=not on_device and resolve_flag(loader.pin_memory, accelerator, "data.loader.pin_memory"),
        on_device=on_device,
        persistent_workers=bool(loader.persistent_workers),
        online_augment=OnlineAugment(online) if online and online.get("enabled") else None,
        distance_targets=cfg.model.head == "distance",
    )


def checkpoint_every(cfg: DictConfig) -> int:
    """Epochs between two ``last.ckpt`` writes (what a resume starts from): ``auto`` is every epoch on the CPU
    (epochs take minutes) and every 5 on a GPU (a full checkpoint with optimizer state costs as much as a third
    of a 512 px epoch there; a kill loses at most 5 epochs of ~2 s)."""
    every = cfg.checkpoint_every_n_epochs
    if every == "auto":
        return 5 if cuda_available(cfg.trainer.accelerator) else 1
    if not isinstance(every, int) or every < 1:
        raise ConfigError(f"checkpoint_every_n_epochs={every!r}: expected auto or a whole number >= 1")
    return every


def training_callbacks(cfg: DictConfig, run_path: Path, has_val: bool, *extra: L.Callback) -> list[L.Callback]:
    """Checkpoints first: ``last.ckpt`` (with optimizer state, for resume) every :func:`checkpoint_every` epochs
    and, only when ``test_checkpoint=best``, ``best.ckpt`` (weights only) by validation loss; then ``extra``,
    then progress: rich bars on a terminal, one plain line per epoch in logs and files (``progress_bar``)."""
    folder = run_path / "checkpoints"
    # "top 1 without a monitor" is Lightning's way to keep just the latest checkpoint, under our name last.ckpt
    # (its save_last only writes when a top-k checkpoint was written in the same step)
    latest = ModelCheckpoint(
        dirpath=folder,
        filename="last",
        monitor=None,
        save_top_k=1,
        every_n_epochs=checkpoint_every(cfg),
        enable_version_counter=False,
    )
    callbacks: list[L.Callback] = [latest]
    if cfg.test_checkpoint == "best":
        callbacks.append(
            ModelCheckpoint(
                dirpath=folder,
                filename="best",
                monitor="loss/val" if has_val else "loss/train",
                mode="min",
                save_weights_only=True,
                auto_insert_metric_name=False,
                enable_version_counter=False,
            )
        )
    callbacks += extra
    mode = cfg.progress_bar
    if mode == "auto":
        mode = "rich" if sys.stdout.isatty() else "plain"
    if mode == "rich":
        callbacks.append(RichProgressBar())
    elif mode == "plain":
        callbacks.append(EpochLines())
    return callbacks


def build_trainer(cfg: DictConfig, run_path: Path, logger: MLFlowLogger, callbacks: list[L.Callback]) -> L.Trainer:
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
        log_artifact=logger.artifact,
    )


def _start_logging(cfg: DictConfig, run: RunFolder, logger: MLFlowLogger, manifest: dict, continued: bool) -> None:
    """Rank 0: the run folder's ``run.json`` and, for a new MLflow run, its params and config artifacts."""
    run.path.mkdir(parents=True, exist_ok=True)
    seconds = float((run.previous or {}).get("train_seconds", 0.0)) if continued else 0.0
    write_json_atomic(
        run.run_file, {"run_id": logger.run_id, "identity": run.identity, "name": run.name, "train_seconds": seconds}
    )
    (run.path / "failed.json").unlink(missing_ok=True)  # an earlier failure is history once the run goes on
    if continued and logger.experiment.get_run(logger.run_id).data.params:
        log.info("continuing %s in MLflow run %s", run.name, logger.run_id)
        return
    resolved = OmegaConf.to_container(cfg, resolve=True)
    logger.log_hyperparams(flatten(resolved))
    logger.experiment.log_dict(logger.run_id, resolved, "config.yaml")
    logger.experiment.log_dict(logger.run_id, manifest, "data_manifest.json")


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
    if not cfg.tune.enabled or not datamodule.manifest["counts"]["val"]:
        return
    from nucleiseg.postprocess.tuning import tune, tuning_metrics, tuning_tags

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
        balance=str(cfg.tune.balance),
    )
    module.hparams.update(result.hparams("val"))
    for key, value in tuning_tags(result, "val").items():
        logger.tag(key, value)
    logger.log_metrics(tuning_metrics(result, "val"))
    module.train(False)


def _share_with_artifact(path: Path, artifact_uri: str) -> None:
    """With a local artifact store on the same file system, make the run folder's checkpoint a hard link to
    MLflow's copy: one file on disk instead of two (the same bytes, both paths keep working)."""
    from urllib.parse import unquote, urlparse

    if not artifact_uri.startswith("file:"):
        return
    stored = Path(unquote(urlparse(artifact_uri).path)) / "checkpoint" / path.name
    if (
        not stored.is_file()
        or stored.stat().st_dev != path.stat().st_dev
        or stored.stat().st_size != path.stat().st_size
    ):
        return
    link = path.with_name(f".{path.name}.link")
    link.unlink(missing_ok=True)
    os.link(stored, link)
    os.replace(link, path)


FINISHING = "finishing.json"  # a run sealed after its test: what finishing needs, so a kill there resumes there


def _seal(cfg: DictConfig, run: RunFolder, setup: Setup, final: dict, metrics: dict, tested: str) -> Path:
    """Rank 0, right after the test: the weights-only ``model.ckpt`` (tuned values and MLflow run id included) and
    ``finishing.json`` (the results), both atomic, before the training checkpoints go. From here a killed run is
    finished by the same command without training again (:func:`_publish`)."""
    module = setup.module
    module.hparams["mlflow_run_id"] = setup.logger.run_id
    path = write_model_checkpoint(run.path / "checkpoints" / MODEL_CHECKPOINT, module.model, module.hparams)
    metrics = {**metrics, "train_seconds": setup.clock.seconds()}
    metrics["train_images"] = float(cfg.trainer.max_epochs * setup.manifest["counts"]["train"])
    speed = setup.test_pass.results.get("speed") or {}
    write_json_atomic(
        run.path / FINISHING,
        {
            "run_id": setup.logger.run_id,
            "identity": run.identity,
            "metrics": metrics,
            "final_epoch_metrics": final,
            "tested_from": tested,
            "speed": {k: str(speed[k]) for k in ("image_size", "batch_size", "precision", "device") if k in speed},
        },
    )
    if not cfg.keep_training_checkpoints:
        for name in ("last.ckpt", "best.ckpt"):  # (MODEL_CARD.md and model.ckpt stay)
            (run.path / "checkpoints" / name).unlink(missing_ok=True)
    return path


def _log_once(logger: MLFlowLogger, metrics: dict[str, float], step: int) -> None:
    """Log the metrics MLflow does not hold yet (a resumed finish never logs one twice), all at ``step``."""
    try:
        present = logger.experiment.get_run(logger.run_id).data.metrics
    except tracking_errors():
        present = {}
    missing = {k: float(v) for k, v in metrics.items() if k not in present}
    if missing:
        logger.log_metrics(missing, step=step)


class RunClock(L.Callback):
    """Keeps ``run.json`` current at every epoch end: training seconds summed over every session of the run
    (a resumed run counts its earlier sessions too)."""

    def __init__(self, run: RunFolder, payload: dict[str, Any]) -> None:
        self.run, self.payload = run, payload
        self.before = float((run.previous or {}).get("train_seconds", 0.0))
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.started

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            write_json_atomic(self.run.run_file, {**self.payload, "train_seconds": self.seconds()})


def _mlflow_run_to_continue(cfg: DictConfig, run: RunFolder) -> str | None:
    """The MLflow run of an unfinished earlier session of this run folder (resumed from its checkpoint, or
    started afresh when it died before its first checkpoint), so a run folder never gets a second MLflow run."""
    if run.previous is None or not run.previous.get("run_id"):
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client, run_id = MlflowClient(tracking_uri(cfg.logger)), run.previous["run_id"]
    try:
        earlier = client.get_run(run_id)
    except MlflowException:
        return None  # the store was reset or moved: start a new MLflow run
    client.update_run(run_id, status="RUNNING")
    if "failure_reason" in earlier.data.tags:  # an earlier failure is history now
        client.delete_tag(run_id, "failure_reason")
    return run_id


@dataclass
class Setup:
    """Everything a run trains with."""

    data_folder: Path
    manifest: dict
    datamodule: NucleiDataModule
    module: SegmentationModule
    logger: MLFlowLogger
    trainer: L.Trainer
    test_pass: SessionTestPass
    clock: RunClock
    resume_from: Path | None


def _setup(cfg: DictConfig, run: RunFolder) -> Setup:
    accelerator = cfg.trainer.accelerator
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # under DDP every rank runs this function; only rank 0 prepares data and writes the run's files. The other
    # ranks are started by Lightning inside trainer.fit, after rank 0 has done both.
    is_rank_zero = rank_zero_only.rank == 0
    data_folder = prepare_dataset(cfg.data, log=log.info) if is_rank_zero else prepared_path(cfg.data)
    manifest = load_manifest(data_folder)
    resume_from = run.path / "checkpoints" / "last.ckpt"
    resuming = bool(cfg.resume) and run.previous is not None and resume_from.is_file()
    if is_rank_zero:  # the experiment exists before Lightning's logger looks (no "not found. Creating it.")
        from nucleiseg.tracking.mlflow_store import use_experiment

        use_experiment(tracking_uri(cfg.logger), cfg.study, artifact_location(cfg.logger))
    continued = _mlflow_run_to_continue(cfg, run) if is_rank_zero and cfg.resume else None
    logger = _logger(cfg, run.name, continued, _tags(cfg, manifest, data_folder, accelerator), run.path)
    if is_rank_zero:
        _start_logging(cfg, run, logger, manifest, continued is not None)
    test_pass = _test_pass(cfg, logger)
    if continued is None:
        run.previous = None  # a new MLflow run starts its clock at zero
    clock = RunClock(run, {"run_id": logger.run_id, "identity": run.identity, "name": run.name})
    callbacks = training_callbacks(cfg, run.path, manifest["counts"]["val"] > 0, test_pass, clock)
    return Setup(
        data_folder,
        manifest,
        build_datamodule(cfg, data_folder, accelerator),
        build_module(cfg, manifest, data_folder, accelerator),
        logger,
        build_trainer(cfg, run.path, logger, callbacks),
        test_pass,
        clock,
        resume_from if resuming else None,
    )


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


def _publish(cfg: DictConfig, run: RunFolder, logger: MLFlowLogger) -> dict[str, Any]:
    """Rank 0, from a sealed run (``model.ckpt`` + ``finishing.json``): metrics and tags to MLflow (each once, the
    test values at the last epoch's step, so MLflow's charts of them are points, not lines from step 0), the
    checkpoint and its model card, ``done.json`` last. Safe to repeat after a kill; returns the test metrics."""
    sealed = json.loads((run.path / FINISHING).read_text())
    metrics, final = sealed["metrics"], sealed["final_epoch_metrics"]
    model_path = run.path / "checkpoints" / MODEL_CHECKPOINT
    hparams = torch.load(model_path, map_location="cpu", weights_only=True)["hyper_parameters"]
    _log_once(logger, metrics, step=int(cfg.trainer.max_epochs) - 1)
    for key, value in sealed.get("speed", {}).items():
        logger.tag(f"speed.{key}", value)
    if logger.artifact(model_path, "checkpoint"):
        try:
            _share_with_artifact(model_path, logger.experiment.get_run(logger.run_id).info.artifact_uri)
        except tracking_errors():  # the server went away: the two copies stay two copies
            pass
    card = run.path / "checkpoints" / "MODEL_CARD.md"
    write_bytes_atomic(card, model_card(hparams, metrics, final, run.name).encode())
    logger.artifact(card, "checkpoint")
    logger.tag("checkpoint", str(model_path))
    if cfg.model.get("register_as"):
        from nucleiseg.tracking.registry import register_model

        register_model(tracking_uri(cfg.logger), logger.run_id, str(cfg.model.register_as), card.read_text())
    write_json_atomic(
        run.done,
        {
            "run_id": logger.run_id,
            "name": run.name,
            "identity": run.identity,
            "metrics": metrics,
            "final_epoch_metrics": final,
            "tested_weights": cfg.test_checkpoint,
            "tested_from": sealed["tested_from"],
            "test_checkpoint": str(model_path),
        },
    )
    logger.tag(DONE_TAG, "true")  # the report counts a run finished only now
    (run.path / FINISHING).unlink(missing_ok=True)
    print_run_summary(run.name, cfg, metrics, final, run.path, logger.run_id, logger.experiment_id, hparams)
    if Pending(run.path).records():
        print(
            f"MLflow at {tracking_uri(cfg.logger)} did not take everything: the results are in {run.path}; "
            f"when the server is back: nucleiseg relog {run.path}",
            file=sys.stderr,
        )
    return metrics


def _train(cfg: DictConfig, run: RunFolder) -> dict[str, Any]:
    setup = _setup(cfg, run)
    final, metrics, tested = _fit_tune_test(cfg, run, setup)
    if setup.trainer.is_global_zero:
        _seal(cfg, run, setup, final, metrics, tested)
        return _publish(cfg, run, setup.logger)
    return metrics


def _finish_sealed(cfg: DictConfig, run: RunFolder) -> dict[str, Any]:
    """A run killed after its test (sealed, not yet published): finish it in its MLflow run, no training."""
    log.info("finishing %s: trained and tested before it was stopped; publishing its results", run.name)
    from nucleiseg.tracking.mlflow_store import use_experiment

    use_experiment(tracking_uri(cfg.logger), cfg.study, artifact_location(cfg.logger))
    continued = _mlflow_run_to_continue(cfg, run)
    logger = _logger(cfg, run.name, continued, {}, run.path)
    (run.path / "failed.json").unlink(missing_ok=True)
    metrics = _publish(cfg, run, logger)
    logger.finalize("success")
    return metrics


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, validate and test one configuration; return its test metrics (also written to ``done.json``)."""
    validate(cfg)
    if cfg.dry_run:
        from nucleiseg.study_cost import plan_run

        name, folder = run_name(cfg), run_folder(cfg)
        if not cfg.dry_run_steps:  # list the runs only
            print(f"dry run: would train {name} [{configuration_label(cfg.encoder, cfg.pretrained)}] in {folder}")
            return {}
        row = plan_run(cfg, name, steps=int(cfg.dry_run_steps))
        print(
            f"dry run: would train {name} [{configuration_label(cfg.encoder, cfg.pretrained)}] in {folder}: about "
            f"{row['seconds'] / 60:.1f} min at {row['images_per_second']:.1f} training images/s here, "
            f"{row['disk_bytes'] / 1e6:.0f} MB"
        )
        return {"projected_seconds": row["seconds"]}
    run = inspect_folder(cfg)
    # rank 0 only: Lightning starts the other DDP ranks as processes that run this function again
    with exclusive(run.path / ".lock", f"run folder {run.path}", enabled=rank_zero_only.rank == 0):
        done = _read_json(run.done)
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
        sealed = _read_json(run.path / FINISHING)
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


# Lightning's own deprecation notice about torch's pytree API, on every run: not the user's to act on
PYTREE_NOTICE = r".*isinstance\(treespec, LeafSpec\).*"


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
            from nucleiseg.hydra_callbacks import stop_sweep

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
