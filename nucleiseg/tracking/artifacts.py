"""Checkpoints stored in MLflow: a finished training run logs ``checkpoint/model.ckpt``, so ``--run-id`` works
from any machine that reaches the tracking server (downloaded once into a local cache)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from nucleiseg.models.zoo import cache_dir  # one cache for models and run checkpoints
from nucleiseg.util.errors import ConfigError

ARTIFACT = "checkpoint/model.ckpt"


def run_checkpoint(run_id: str, store_uri: str) -> Path:
    """The weights of MLflow run ``run_id``: the file its ``checkpoint`` tag names when it is on this machine,
    else its ``checkpoint/model.ckpt`` artifact, downloaded into :func:`cache_dir` (once)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(store_uri).get_run(run_id)
    except MlflowException as error:
        raise ConfigError(f"--run-id {run_id}: no such MLflow run at {store_uri} ({error.message[:160]})") from None
    tagged = run.data.tags.get("checkpoint")
    if tagged and Path(tagged).is_file():
        return Path(tagged)
    cached = cache_dir() / "runs" / run_id / "model.ckpt"
    if cached.is_file():
        return cached
    import mlflow

    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent) as scratch:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=ARTIFACT, dst_path=scratch, tracking_uri=store_uri
            )
        except (MlflowException, OSError) as error:
            raise ConfigError(
                f"--run-id {run_id}: the run has no {ARTIFACT} artifact at {store_uri} (did it finish? runs "
                f"trained before checkpoints were logged keep theirs only on the training machine): {error}"
            ) from None
        shutil.move(path, cached)  # same folder: a rename, so the cache never holds half a file
    return cached
