"""The end of a training run: sealed right after its test (``model.ckpt`` + ``finishing.json``, atomic), then
published (metrics and tags to MLflow once each, the checkpoint and its model card, the model registry, and
``done.json`` last). A run killed between the two is finished by the same command without training again."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig

from nucleiseg.inference.checkpoint import write_model_checkpoint
from nucleiseg.models.card import model_card
from nucleiseg.tracking.mlflow_store import tracking_uri
from nucleiseg.tracking.pending import Pending, tracking_errors
from nucleiseg.tracking.study import DONE_TAG
from nucleiseg.tracking.summary import print_run_summary
from nucleiseg.training.assemble import Setup
from nucleiseg.training.identity import RunFolder
from nucleiseg.util.writing import write_bytes_atomic, write_json_atomic

log = logging.getLogger(__name__)


MODEL_CHECKPOINT = "model.ckpt"


FINISHING = "finishing.json"  # a run sealed after its test: what finishing needs, so a kill there resumes there


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


def seal(cfg: DictConfig, run: RunFolder, setup: Setup, final: dict, metrics: dict, tested: str) -> Path:
    """Rank 0, right after the test: the weights-only ``model.ckpt`` (tuned values and MLflow run id included) and
    ``finishing.json`` (the results), both atomic, before the training checkpoints go. From here a killed run is
    finished by the same command without training again (:func:`publish`)."""
    module = setup.module
    module.hparams["mlflow_run_id"] = setup.logger.run_id
    path = write_model_checkpoint(run.path / "checkpoints" / MODEL_CHECKPOINT, module.model, module.hparams)
    # the training time as run.json holds it (every session, to the last epoch's end): tuning and testing are not
    # training, and run.json and done.json must not give two numbers for one run
    trained = json.loads(run.run_file.read_text()).get("train_seconds") if run.run_file.is_file() else None
    metrics = {**metrics, "train_seconds": float(trained if trained is not None else setup.clock.seconds())}
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


def publish(cfg: DictConfig, run: RunFolder, logger: MLFlowLogger) -> dict[str, Any]:
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
