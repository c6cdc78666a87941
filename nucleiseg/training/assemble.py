"""The assembly layer: a composed config made into the objects a training run uses, in one place.

:func:`validate` checks every value before any work starts; the ``build_*`` functions make the LightningModule
(its ``_partial_`` optimizer and scheduler completed here), the DataModule, the callbacks, the MLflow logger and
the Trainer, resolving every ``auto`` against the accelerator; :func:`setup_run` completes them with the run-time
values (the prepared data and its manifest, the run folder, the MLflow run to continue). ``train.py`` keeps the
run's lifecycle only; ``nucleiseg benchmark`` builds its measured loop from these same functions.
"""

from __future__ import annotations

import functools
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from nucleiseg.config.plain import plain
from nucleiseg.config.settings import build, carried_settings, inference_settings, postprocess_settings
from nucleiseg.data.datamodule import NucleiDataModule
from nucleiseg.data.prepare import load_manifest, prepare_dataset, prepared_path, training_resolution
from nucleiseg.inference.held_out_pass import SessionTestPass
from nucleiseg.models.factory import check_configuration, check_head, configuration_label
from nucleiseg.models.lit_module import SegmentationModule
from nucleiseg.models.weights import check_imagenet_weights
from nucleiseg.tracking.mlflow_store import artifact_location, git_commit, tracking_uri
from nucleiseg.tracking.pending import Pending
from nucleiseg.training.epoch_lines import EpochLines
from nucleiseg.training.identity import RunFolder, configuration_hash, variant_label
from nucleiseg.training.protocol import differences_from_paper
from nucleiseg.training.run_record import RunClock, mlflow_run_to_continue, start_logging
from nucleiseg.util.devices import cuda_available, device_name, resolve_flag, resolve_precision
from nucleiseg.util.errors import ConfigError

log = logging.getLogger(__name__)


# Lightning's own deprecation notice about torch's pytree API, on every run: not the user's to act on
PYTREE_NOTICE = r".*isinstance\(treespec, LeafSpec\).*"


def validate(cfg: DictConfig) -> None:
    """Fail before any work on an invalid configuration (bad names, bad combinations, bad values)."""
    _check_groups(cfg)
    spec = check_configuration(cfg.encoder, cfg.pretrained)
    check_head(cfg.model.head, cfg.model.n_rays)
    if cfg.model.unet_widths and spec.smp_name is not None:
        raise ConfigError(f"model.unet_widths applies to the plain U-Nets only, not to encoder={cfg.encoder}")
    if cfg.pretrained and not cfg.dry_run:
        check_imagenet_weights(spec.smp_name, cfg.model.weights_dir)
    resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    resolve_flag(cfg.model.channels_last, cfg.trainer.accelerator, "model.channels_last")
    resolve_flag(cfg.data.loader.pin_memory, cfg.trainer.accelerator, "data.loader.pin_memory")
    postprocess_settings(cfg)
    inference_settings(cfg)
    build(cfg.speed), build(cfg.tune), build(cfg.slide)
    if cfg.get("threshold") is None:
        raise ConfigError("threshold=null: training needs a probability threshold between 0 and 1")
    from nucleiseg.config.checks import BOOLEANS, CHOICES, RANGES, WHOLE_AT_LEAST, check_value

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


def _check_groups(cfg: DictConfig) -> None:
    """The groups training builds are there, and the checkpoint callbacks can do what the run asks of them."""
    for group in ("model", "loss", "optimizer"):
        if not cfg.get(group):
            raise ConfigError(f"{group}: the group is missing (removed with ~{group}?); training needs one")
    callbacks = cfg.get("callbacks") or {}
    if cfg.test_checkpoint == "best" and not (callbacks.get("best_checkpoint") or {}).get("monitor"):
        raise ConfigError("test_checkpoint=best needs callbacks.best_checkpoint with a monitor (it was removed)")
    if callbacks.get("last_checkpoint"):
        checkpoint_every(callbacks.last_checkpoint.get("every_n_epochs", "auto"), cfg.trainer.accelerator)


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


def build_logger(cfg: DictConfig, name: str, run_id: str | None, tags: dict[str, str], run_dir: Path) -> MLFlowLogger:
    """The ``logger`` group's MLflow logger for this run, resilient: writes the server does not take wait in the
    run folder for ``nucleiseg relog`` (see :mod:`nucleiseg.tracking.pending`)."""
    return build(
        cfg.logger, pending=Pending(run_dir), experiment_name=cfg.study, run_name=name, tags=tags, run_id=run_id
    )


def run_tags(cfg: DictConfig, manifest: dict, data_folder: Path, accelerator: str) -> dict[str, str]:
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
    """The run's LightningModule: :func:`module_from_config` with what the prepared data gives it (its stain
    state, and the data record the checkpoint keeps)."""
    return module_from_config(
        cfg,
        accelerator,
        stain=manifest.get("stain"),
        data=_data_info(cfg, manifest, data_folder),
        classes=manifest.get("classes") or [],
    )


def model_types(value: Any, classes: list[str]) -> list[str] | None:
    """``model.types`` made concrete: ``auto`` is the prepared data's nucleus classes (none for untyped data),
    null an untyped model even on typed data, a list must be the data's classes."""
    if value == "auto":
        return list(classes) or None
    if value is None:
        return None
    given = [str(name) for name in value]
    if classes and given != list(classes):
        raise ConfigError(
            f"model.types={given}: the prepared data's classes are {list(classes)}; expected auto or them"
        )
    return given


def module_from_config(
    cfg: DictConfig,
    accelerator: str,
    stain: dict | None = None,
    data: dict | None = None,
    classes: list[str] | None = None,
) -> SegmentationModule:
    """The LightningModule of the ``model`` group, before any data exists (what ``benchmark`` and the dry run
    time), completed with the run-time values: encoder and pretrained, threshold, the ``loss`` group, the
    ``_partial_`` optimizer (fused Adam on CUDA) and scheduler, channels_last resolved for ``accelerator``, the
    post-processing the checkpoint records, and ``stain`` and ``data`` from the prepared data."""
    optimizer = instantiate(cfg.optimizer)
    if cfg.optimizer.get("fused") is None and cuda_available(accelerator):
        # the same Adam in fused CUDA kernels: one launch per step instead of several per parameter group
        optimizer = functools.partial(optimizer, fused=True)
    return build(
        cfg.model,
        encoder=cfg.encoder,
        pretrained=cfg.pretrained,
        threshold=float(cfg.threshold),
        loss=build(cfg.loss),
        optimizer=optimizer,
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        channels_last=resolve_flag(cfg.model.channels_last, accelerator, "model.channels_last"),
        postprocess=postprocess_settings(cfg).as_dict(),
        stain=stain,
        data=data,
        types=model_types(cfg.model.types, classes or []),
    )


def build_datamodule(cfg: DictConfig, data_folder: Path, accelerator: str) -> NucleiDataModule:
    """The ``data.loader`` group's DataModule over ``data_folder``, its ``auto`` values resolved for
    ``accelerator``, with the online augmentation when ``data.online_augment.enabled``."""
    loader, online = cfg.data.loader, cfg.data.get("online_augment")
    on_device = resolve_flag(loader.on_device, accelerator, "data.loader.on_device")
    return build(
        loader,
        folder=data_folder,
        num_workers=0 if on_device else loader.num_workers,
        pin_memory=not on_device and resolve_flag(loader.pin_memory, accelerator, "data.loader.pin_memory"),
        on_device=on_device,
        online_augment=build(online, switches=("enabled",)) if online and online.get("enabled") else None,
        distance_targets=cfg.model.head == "distance",
    )


def checkpoint_every(every: Any, accelerator: str) -> int:
    """Epochs between two ``last.ckpt`` writes (what a resume starts from): ``auto`` is every epoch on the CPU
    (epochs take minutes) and every 5 on a GPU (a full checkpoint with optimizer state costs as much as a third
    of a 512 px epoch there; a kill loses at most 5 epochs of ~2 s)."""
    if every == "auto":
        return 5 if cuda_available(accelerator) else 1
    if not isinstance(every, int) or every < 1:
        raise ConfigError(
            f"callbacks.last_checkpoint.every_n_epochs={every!r} (default: checkpoint_every_n_epochs): expected auto "
            "or a whole number >= 1"
        )
    return every


def training_callbacks(cfg: DictConfig, run_path: Path, has_val: bool, *extra: L.Callback) -> list[L.Callback]:
    """The ``callbacks`` group, each from its ``_target_``, completed with the run's checkpoint folder:
    ``last_checkpoint`` every :func:`checkpoint_every` epochs, ``best_checkpoint`` only when
    ``test_checkpoint=best`` (by the training loss when there is no validation split); then ``extra``, then
    progress: rich bars on a terminal, one plain line per epoch in logs and files (``progress_bar``)."""
    folder = str(run_path / "checkpoints")
    callbacks: list[L.Callback] = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None or (name == "best_checkpoint" and cfg.test_checkpoint != "best"):
            continue
        if name == "last_checkpoint":
            every = checkpoint_every(node.get("every_n_epochs", "auto"), cfg.trainer.accelerator)
            callbacks.append(build(node, dirpath=folder, every_n_epochs=every))
        elif name == "best_checkpoint":
            callbacks.append(build(node, dirpath=folder, **({} if has_val else {"monitor": "loss/train"})))
        else:
            callbacks.append(build(node))
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


def build_test_pass(cfg: DictConfig, logger: MLFlowLogger) -> SessionTestPass:
    """The held-out test pass, run by the session of the model just trained (its own threshold and
    post-processing, :func:`~nucleiseg.config.settings.carried_settings`), timed per the ``speed`` group."""
    return SessionTestPass(
        carried_settings(cfg),
        iou_threshold=float(cfg.metrics.iou_threshold),
        type_match_um=float(cfg.metrics.type_match_um),
        speed=build(cfg.speed).measurement(int(cfg.data.protocol.image_size)),
        overlays=logger.overlays,
        log_artifact=logger.artifact,
    )


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


def setup_run(cfg: DictConfig, run: RunFolder) -> Setup:
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
    continued = mlflow_run_to_continue(cfg, run) if is_rank_zero and cfg.resume else None
    logger = build_logger(cfg, run.name, continued, run_tags(cfg, manifest, data_folder, accelerator), run.path)
    if is_rank_zero:
        start_logging(cfg, run, logger, manifest, continued is not None)
    test_pass = build_test_pass(cfg, logger)
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
