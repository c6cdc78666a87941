"""Training entry point: ``nucleiseg.train.run(cfg)`` trains, validates and tests one configuration and seed.

``train.py`` at the repository root composes the Hydra config and calls :func:`main`. A run lives in
``outputs/<study>/<run name>/`` (checkpoints, ``run.json``, ``done.json``); the run name is derived from the
configuration, so re-launching the same command finds the same folder: it resumes an unfinished run into the
same MLflow run, and skips a finished one.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from nucleiseg.data.datamodule import NucleiDataModule, to_model_input
from nucleiseg.data.prepare import load_manifest, prepare_dataset, prepared_path
from nucleiseg.devices import cuda_available, device_name, resolve_flag, resolve_precision
from nucleiseg.errors import ConfigError, NucleisegError
from nucleiseg.inference.speed import measure_inference
from nucleiseg.models.factory import check_configuration, configuration_label
from nucleiseg.models.lit_module import SegmentationModule
from nucleiseg.models.weights import check_imagenet_weights
from nucleiseg.run_identity import identity_hash, run_folder, run_name
from nucleiseg.tracking.mlflow_store import flatten, git_commit, resolve_artifact_location, tracking_uri
from nucleiseg.tracking.overlays import comparison_panel, png_bytes
from nucleiseg.tracking.summary import print_run_summary
from nucleiseg.writing import write_json_atomic

log = logging.getLogger(__name__)


def validate(cfg: DictConfig) -> None:
    """Fail before any work on an invalid configuration (bad names, bad combinations, bad values)."""
    spec = check_configuration(cfg.encoder, cfg.pretrained)
    if cfg.pretrained and not cfg.dry_run:
        check_imagenet_weights(spec.smp_name, cfg.model.weights_dir)
    resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    resolve_flag(cfg.model.channels_last, cfg.trainer.accelerator, "model.channels_last")
    resolve_flag(cfg.data.loader.pin_memory, cfg.trainer.accelerator, "data.loader.pin_memory")
    if cfg.test_checkpoint not in ("last", "best"):
        raise ConfigError(f"test_checkpoint={cfg.test_checkpoint!r}: expected last or best")
    if cfg.progress_bar not in ("auto", "rich", "none"):
        raise ConfigError(f"progress_bar={cfg.progress_bar!r}: expected auto, rich or none")
    if int(cfg.trainer.max_epochs) < 1:
        raise ConfigError(f"trainer.max_epochs={cfg.trainer.max_epochs}: expected at least 1")


def _gpu_for_job(cfg: DictConfig) -> dict[str, Any]:
    """Under the local-GPU launcher (joblib), job k of a sweep trains on GPU k mod (number of GPUs)."""
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


def _sync_batchnorm(cfg: DictConfig) -> dict[str, bool]:
    """SyncBatchNorm exists only for CUDA; DDP on CPU (gloo) keeps per-process BatchNorm statistics."""
    wanted = bool(cfg.trainer.get("sync_batchnorm", False))
    if wanted and not cuda_available(cfg.trainer.accelerator):
        log.info("trainer.sync_batchnorm=true needs CUDA; running with per-process BatchNorm on CPU")
        return {"sync_batchnorm": False}
    return {}


def _callbacks(cfg: DictConfig, run_dir: Path, has_val: bool) -> tuple[list, ModelCheckpoint]:
    monitor = "val/loss" if has_val else "train/loss"
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=monitor,
        mode="min",
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    callbacks: list = [checkpoint]
    if cfg.progress_bar == "rich" or (cfg.progress_bar == "auto" and sys.stdout.isatty()):
        callbacks.append(RichProgressBar())
    return callbacks, checkpoint


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
        "configuration": configuration_label(cfg.encoder, cfg.pretrained),
        "git_commit": git_commit(Path(__file__).parent),
        "data_manifest_hash": manifest["content_hash"],
        "data_name": manifest["name"],
        "data_folder": str(data_folder.resolve()),
        "device": device_name(accelerator),
    }


@torch.no_grad()
def _log_overlays(
    module: SegmentationModule, datamodule: NucleiDataModule, logger: MLFlowLogger, count: int, threshold: float
) -> None:
    """Log ``count`` test predictions as image | truth | prediction | error-overlay PNGs."""
    test = datamodule.splits.get("test")
    if not count or test is None:
        return
    module.eval()
    for index in range(min(count, len(test))):
        item = test[index]
        image = to_model_input(item["image"][None]).to(module.device)
        probability = torch.sigmoid(module(image).float())[0, 0].cpu().numpy()
        panel = comparison_panel(
            item["image"].permute(1, 2, 0).numpy(), item["mask"].numpy() > 0, probability >= threshold
        )
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / f"test_{index:02d}.png"
            path.write_bytes(png_bytes(panel))
            logger.experiment.log_artifact(logger.run_id, str(path), "overlays")


def _instance_metrics(
    module: SegmentationModule, datamodule: NucleiDataModule, cfg: DictConfig, precision: str, accelerator: str
) -> dict[str, float]:
    """AJI, PQ and object F1 on the test split, with watershed and with connected components (same path as
    ``nucleiseg evaluate``)."""
    from nucleiseg.evaluate import score
    from nucleiseg.inference.tiling import Segmenter

    test = datamodule.splits["test"]
    items = ((str(i), test[i]["image"].permute(1, 2, 0).numpy(), test[i]["mask"].numpy()) for i in range(len(test)))
    segmenter = Segmenter(
        module.model,
        "cuda" if cuda_available(accelerator) else "cpu",
        precision,
        tile_size=max(cfg.predict.tile_size, cfg.data.protocol.image_size),
    )
    results = score(segmenter, items, cfg.threshold, cfg.postprocess, "test")
    return {k: v for k, v in results.items() if k.rsplit("_", 1)[-1] in ("watershed", "components")}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, validate and test one configuration; return its test metrics (also written to ``done.json``)."""
    validate(cfg)
    name, run_dir = run_name(cfg), run_folder(cfg)
    identity = identity_hash(cfg)
    if cfg.dry_run:
        print(f"dry run: would train {name} [{configuration_label(cfg.encoder, cfg.pretrained)}] in {run_dir}")
        return {}
    done_file, run_file = run_dir / "done.json", run_dir / "run.json"
    previous = json.loads(run_file.read_text()) if run_file.is_file() else None
    if previous is not None and previous["identity"] != identity:
        raise ConfigError(
            f"{run_dir} holds a run of another configuration (identity {previous['identity'][:10]}, "
            f"now {identity[:10]}); use another study=NAME or remove that folder"
        )
    if done_file.is_file() and cfg.skip_finished:
        done = json.loads(done_file.read_text())
        log.info(
            "skipping %s: finished before (MLflow run %s); skip_finished=false to train again", name, done["run_id"]
        )
        return done["metrics"]
    if done_file.is_file():  # training again on purpose: a fresh MLflow run, not a resume
        previous = None
        done_file.unlink()

    accelerator = cfg.trainer.accelerator
    precision = resolve_precision(cfg.trainer.precision, accelerator)
    L.seed_everything(cfg.seed, workers=True)
    # under DDP every rank runs this function; only rank 0 prepares data and writes the run's files. The other
    # ranks are started by Lightning inside trainer.fit, after rank 0 has done both.
    is_rank_zero = rank_zero_only.rank == 0
    data_folder = prepare_dataset(cfg.data, log=log.info) if is_rank_zero else prepared_path(cfg.data)
    manifest = load_manifest(data_folder)
    datamodule = NucleiDataModule(
        cfg.data, pin_memory=resolve_flag(cfg.data.loader.pin_memory, accelerator, "data.loader.pin_memory")
    )
    module = SegmentationModule(
        encoder=cfg.encoder,
        pretrained=cfg.pretrained,
        smooth=cfg.loss.smooth,
        threshold=cfg.threshold,
        optimizer=instantiate(cfg.optimizer),
        weights_dir=cfg.model.weights_dir,
        channels_last=resolve_flag(cfg.model.channels_last, accelerator, "model.channels_last"),
        stain=manifest.get("stain"),
    )
    if cfg.model.compile:
        # in place (nn.Module.compile), so state_dict keys and checkpoints are the same as without it
        module.model.compile()
    resume_from = run_dir / "checkpoints" / "last.ckpt"
    resuming = bool(cfg.resume) and previous is not None and resume_from.is_file()
    logger = _logger(
        cfg, name, previous["run_id"] if resuming else None, _tags(cfg, manifest, data_folder, accelerator)
    )
    if is_rank_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_file, {"run_id": logger.run_id, "identity": identity, "name": name})
        if not resuming:
            logger.log_hyperparams(flatten(OmegaConf.to_container(cfg, resolve=True)))
            logger.experiment.log_dict(logger.run_id, OmegaConf.to_container(cfg, resolve=True), "config.yaml")
            logger.experiment.log_dict(logger.run_id, manifest, "data_manifest.json")
        else:
            log.info("resuming %s from %s into MLflow run %s", name, resume_from, logger.run_id)

    has_val = manifest["counts"]["val"] > 0
    callbacks, checkpoint = _callbacks(cfg, run_dir, has_val)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        precision=precision,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        enable_progress_bar=len(callbacks) > 1,
        _convert_="partial",
        **_gpu_for_job(cfg),
        **_sync_batchnorm(cfg),
    )
    started = time.perf_counter()
    try:
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resuming else None)
        except SystemExit:
            # Lightning turns Ctrl-C into sys.exit(1) and ignores SIGINT from then on; make it an interruption
            # again (recorded by main(), resumable) and give Ctrl-C back to the user
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if trainer.interrupted:
                raise KeyboardInterrupt(f"{name} interrupted; re-run the same command to resume") from None
            raise
        final = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
        test_path = checkpoint.best_model_path if cfg.test_checkpoint == "best" else checkpoint.last_model_path
        if not test_path or not Path(test_path).is_file():
            raise NucleisegError(
                f"test_checkpoint={cfg.test_checkpoint}: no such checkpoint was written in {run_dir / 'checkpoints'}"
            )
        results = trainer.test(module, datamodule=datamodule, ckpt_path=test_path, verbose=False)[0]
    except torch.cuda.OutOfMemoryError:
        raise NucleisegError(
            f"CUDA out of memory training {name} with batch size {cfg.data.loader.batch_size} at {precision}: "
            "try a smaller data.loader.batch_size, trainer.precision=bf16-mixed (or 16-mixed), or a smaller encoder"
        ) from None
    metrics = {k: float(v) for k, v in results.items()}
    if not trainer.is_global_zero:
        return metrics
    metrics.update(_finish(cfg, module, datamodule, logger, precision, test_path))
    metrics["train_seconds"] = time.perf_counter() - started
    logger.log_metrics({"train_seconds": metrics["train_seconds"]})
    write_json_atomic(
        done_file,
        {
            "run_id": logger.run_id,
            "name": name,
            "identity": identity,
            "metrics": metrics,
            "final_epoch_metrics": final,
            "test_checkpoint": str(test_path),
        },
    )
    print_run_summary(name, cfg, metrics, final, run_dir, logger.run_id)
    return metrics


def _finish(
    cfg: DictConfig,
    module: SegmentationModule,
    datamodule: NucleiDataModule,
    logger: MLFlowLogger,
    precision: str,
    test_path: str,
) -> dict[str, float]:
    """After the test pass, on rank 0: overlays, instance metrics, inference speed, the checkpoint tag."""
    accelerator = cfg.trainer.accelerator
    _log_overlays(module, datamodule, logger, cfg.logger.overlays, cfg.threshold)
    metrics = _instance_metrics(module, datamodule, cfg, precision, accelerator)
    speed = measure_inference(
        module.model,
        cfg.speed.image_size,
        cfg.speed.batch_size,
        precision,
        "cuda" if cuda_available(accelerator) else "cpu",
        cfg.speed.warmup,
        cfg.speed.iterations,
        module.hparams.channels_last,
    )
    metrics["test/images_per_second"] = speed["images_per_second"]
    logger.log_metrics(metrics)
    for key in ("image_size", "batch_size", "precision", "device"):
        logger.experiment.set_tag(logger.run_id, f"speed.{key}", str(speed[key]))
    logger.experiment.set_tag(logger.run_id, "checkpoint", str(test_path))
    return metrics


def record_failure(cfg: DictConfig, error: BaseException) -> None:
    """Mark the MLflow run of ``cfg`` FAILED with the reason, and write ``failed.json`` in its folder."""
    try:
        run_dir = run_folder(cfg)
        reason = f"{type(error).__name__}: {error}"[:4000]
        run_file = run_dir / "run.json"
        if run_file.is_file():
            from mlflow.tracking import MlflowClient

            run_id = json.loads(run_file.read_text())["run_id"]
            client = MlflowClient(tracking_uri=tracking_uri(cfg.logger))
            client.set_tag(run_id, "failure_reason", reason)
            client.set_terminated(run_id, status="FAILED")
        if run_dir.is_dir():
            write_json_atomic(run_dir / "failed.json", {"reason": reason})
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
        record_failure(cfg, KeyboardInterrupt("interrupted; re-run the same command to resume"))
        raise
    except Exception as error:
        record_failure(cfg, error)
        if _is_multirun():
            log.error("job %s failed: %s", run_name(cfg), error, exc_info=not isinstance(error, NucleisegError))
            return {"status": "failed", "run": run_name(cfg), "reason": str(error)}
        if isinstance(error, NucleisegError | FileNotFoundError):
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
