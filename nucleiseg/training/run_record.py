"""What a run keeps of itself while it trains: its folder's ``run.json`` (identity, MLflow run, training seconds
over every session) and its MLflow run, continued rather than duplicated when an unfinished run goes on."""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

from nucleiseg.tracking.mlflow_store import flatten, tracking_uri
from nucleiseg.training.identity import RunFolder
from nucleiseg.util.writing import write_json_atomic

log = logging.getLogger(__name__)


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


def mlflow_run_to_continue(cfg: DictConfig, run: RunFolder) -> str | None:
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


def start_logging(cfg: DictConfig, run: RunFolder, logger: MLFlowLogger, manifest: dict, continued: bool) -> None:
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
