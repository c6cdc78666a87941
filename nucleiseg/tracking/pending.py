"""When the tracking server is down or refuses a write, a run keeps going and loses nothing.

Every write to MLflow during and after training goes through :class:`Pending`: a write that fails is appended to
``RUN_DIR/mlflow_pending.jsonl`` (metrics with their step, tags, artifacts copied beside it, the final status)
and the run carries on: its checkpoint and ``done.json`` are on disk either way. ``nucleiseg relog RUN_DIR``
replays the file into the run's MLflow run once the server is back, and removes it when everything is there.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from argparse import Namespace
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nucleiseg.util.errors import NucleisegError, first_line

if TYPE_CHECKING:
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)
PENDING = "mlflow_pending.jsonl"
PENDING_ARTIFACTS = "mlflow_pending_artifacts"


def tracking_errors() -> tuple[type[BaseException], ...]:
    """What a tracking store raises when it is unreachable or refuses a write."""
    from mlflow.exceptions import MlflowException

    errors: list[type[BaseException]] = [MlflowException, OSError, TimeoutError]
    try:
        import requests

        errors.append(requests.RequestException)
    except ImportError:  # pragma: no cover - requests comes with mlflow
        pass
    return tuple(errors)


class Pending:
    """The run folder's record of MLflow writes that did not go through (see the module docstring)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / PENDING
        self.warned = False

    def add(self, kind: str, **payload: Any) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps({"kind": kind, "time": time.time(), **payload}) + "\n")

    def attempt(self, kind: str, write: Callable[[], Any], **payload: Any) -> bool:
        """Run ``write``; when the store fails, keep ``payload`` for later and warn once. True if written."""
        try:
            write()
            return True
        except tracking_errors() as error:
            if kind == "artifact":  # the file may be temporary (an overlay): keep a copy beside the record
                kept = self.run_dir / PENDING_ARTIFACTS / f"{len(self.records())}-{Path(payload['path']).name}"
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(payload["path"], kept)
                payload = {**payload, "path": str(kept)}
            self.add(kind, **payload)
            if not self.warned:
                log.warning(
                    "MLflow did not take a write (%s); the run goes on and keeps it in %s for `nucleiseg relog %s`",
                    first_line(error, 160),
                    self.path,
                    self.run_dir,
                )
                self.warned = True
            return False

    def records(self) -> list[dict[str, Any]]:
        """The writes kept, in order; a line that does not parse (the last one, cut by a crash mid-write) is
        skipped with a warning, never a reason to replay nothing."""
        if not self.path.is_file():
            return []
        records, unreadable = [], 0
        for line in self.path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                unreadable += 1
        if unreadable:
            log.warning(
                "%s: %d line(s) could not be read (cut by a crash while writing) and are skipped", self.path, unreadable
            )
        return records

    def replay(self, client: MlflowClient, run_id: str) -> int:
        """Write every kept record to MLflow run ``run_id``; the file goes only when all went through."""
        records = self.records()
        self._check_run(client, run_id)
        for record in records:
            _replay_record(client, run_id, record)
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.run_dir / PENDING_ARTIFACTS, ignore_errors=True)
        return len(records)

    def _check_run(self, client: MlflowClient, run_id: str) -> None:
        """Refuse to replay into a store that does not hold run ``run_id`` (another server, a wrong URI)."""
        from mlflow.exceptions import MlflowException

        try:
            client.get_run(run_id)
        except MlflowException:
            raise NucleisegError(
                f"{self.run_dir}: its MLflow run {run_id} is not in the tracking store ({client.tracking_uri}); relog "
                "into the store the run was started in (logger.tracking_uri=... or MLFLOW_TRACKING_URI)"
            ) from None


def _replay_record(client: MlflowClient, run_id: str, record: dict[str, Any]) -> None:
    """Write one kept record (metrics, tags, params, an artifact or the final status) to MLflow run ``run_id``;
    a record of another kind is passed over."""
    kind = record["kind"]
    if kind == "metrics":
        from mlflow.entities import Metric

        stamp = int(record["time"] * 1000)
        metrics = [Metric(k, float(v), stamp, record.get("step") or 0) for k, v in record["metrics"].items()]
        client.log_batch(run_id, metrics=metrics)
    elif kind == "tags":
        for key, value in record["tags"].items():
            client.set_tag(run_id, key, value)
    elif kind == "params":
        _replay_params(client, run_id, record["params"])
    elif kind == "artifact":
        client.log_artifact(run_id, record["path"], record.get("folder"))
    elif kind == "status":
        client.set_terminated(run_id, record["status"])


def _replay_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log the ``params`` run ``run_id`` does not have yet: params are write-once in MLflow, and the same ones come
    at every stage."""
    logged = client.get_run(run_id).data.params
    for key, value in params.items():
        if key not in logged:
            client.log_param(run_id, key, value)


def resilient_logger(pending: Pending, **kwargs: Any) -> MLFlowLogger:
    """Lightning's MLFlowLogger whose writes during and after training go through ``pending``: an unreachable
    tracking server never stops a run. ``tag`` and ``artifact`` are the run's other writes, kept the same way."""
    from lightning.pytorch.loggers import MLFlowLogger
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    class ResilientMLFlowLogger(MLFlowLogger):
        @rank_zero_only
        def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
            values = {k: float(v) for k, v in metrics.items()}
            pending.attempt("metrics", lambda: MLFlowLogger.log_metrics(self, metrics, step), metrics=values, step=step)

        @rank_zero_only
        def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
            from lightning.fabric.utilities.logger import _convert_params, _flatten_dict

            values = {k: str(v)[:250] for k, v in _flatten_dict(_convert_params(params)).items()}
            pending.attempt("params", lambda: MLFlowLogger.log_hyperparams(self, params), params=values)

        @rank_zero_only
        def finalize(self, status: str = "success") -> None:
            final = {"success": "FINISHED", "failed": "FAILED", "finished": "FINISHED"}.get(status, status)
            pending.attempt("status", lambda: MLFlowLogger.finalize(self, status), status=final)

        def tag(self, key: str, value: str) -> bool:
            return pending.attempt("tags", lambda: self.experiment.set_tag(self.run_id, key, value), tags={key: value})

        def artifact(self, path: Path, folder: str | None = None) -> bool:
            return pending.attempt(
                "artifact",
                lambda: self.experiment.log_artifact(self.run_id, str(path), folder),
                path=str(path),
                folder=folder,
            )

    return ResilientMLFlowLogger(**kwargs)


def mlflow_logger(
    *,
    tracking_uri: str,
    artifact_location: str | None,
    overlays: int,
    pending: Pending,
    experiment_name: str,
    run_name: str,
    tags: dict[str, str],
    run_id: str | None,
) -> MLFlowLogger:
    """The ``logger`` group's ``_target_``: :func:`resilient_logger` at the group's store (``MLFLOW_TRACKING_URI``
    replaces ``tracking_uri``; a tracking server keeps its own artifacts), completed by the assembly with the
    run's values. ``overlays``: prediction overlays the held-out test pass logs through it."""
    from nucleiseg.tracking.mlflow_store import artifact_location as artifacts_for
    from nucleiseg.tracking.mlflow_store import tracking_uri as store_for

    group = {"tracking_uri": tracking_uri, "artifact_location": artifact_location}
    logger = resilient_logger(
        pending,
        experiment_name=experiment_name,
        run_name=run_name,
        tracking_uri=store_for(group),
        tags=tags,
        artifact_location=artifacts_for(group),
        run_id=run_id,
        log_model=False,
    )
    logger.overlays = int(overlays)
    return logger
