"""Checkpoints stored in MLflow: a finished training run logs ``checkpoint/model.ckpt``, so ``--run-id`` (and
``models:/NAME/VERSION``, :mod:`nucleiseg.tracking.registry`) works from any machine that reaches the tracking server.

Downloaded once into the local cache, under a key of the store (a hash of its tracking URI) and the run, with the
SHA-256 recorded at download beside the file: a copy that changed since is downloaded again, and an interrupted or
failed download leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from pathlib import Path

from nucleiseg.models.fetch import (  # one cache for models and run checkpoints, one way to fill it
    cached_copy,
    cleanup_on_termination,
    file_sha256,
    record_sha256,
    remove_stale_temporaries,
    temporary_name,
    writable_cache_folder,
)
from nucleiseg.models.zoo import cache_dir
from nucleiseg.tracking.mlflow_store import resolve_tracking_uri
from nucleiseg.util.errors import ConfigError, first_line

log = logging.getLogger(__name__)
ARTIFACT = "checkpoint/model.ckpt"


def store_key(uri: str) -> str:
    """A short hash of the tracking store ``uri`` (a relative SQLite path made absolute first): the cache folder of
    what was downloaded from that store."""
    return hashlib.sha256(resolve_tracking_uri(uri).encode()).hexdigest()[:16]


def folder_name(text: str) -> str:
    """``text`` as one safe path component (a registered model's name may hold anything but a slash)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip(".")
    return safe[:80] or "_"


def cached_artifact(checkpoint: Path, store_uri: str, run_id: str, what: str, missing: str) -> Path:
    """``checkpoint`` (a cache path ending in ``checkpoint/model.ckpt``), downloaded from run ``run_id``'s
    :data:`ARTIFACT` unless the cache holds it as it was downloaded. Errors are one line starting with ``what``;
    ``missing`` says what is wrong when the run has no such artifact."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    if cached_copy(checkpoint, None, what) is not None:
        return checkpoint
    folder = writable_cache_folder(checkpoint.parent, f"{what} (its download from MLflow)")
    remove_stale_temporaries(folder)
    checkpoint.with_name(checkpoint.name + ".sha256").unlink(missing_ok=True)
    scratch = temporary_name(checkpoint)
    with cleanup_on_termination():
        try:
            scratch.mkdir()
            try:
                path = Path(
                    mlflow.artifacts.download_artifacts(
                        run_id=run_id, artifact_path=ARTIFACT, dst_path=str(scratch), tracking_uri=store_uri
                    )
                )
            except (MlflowException, OSError) as error:
                raise ConfigError(f"{what}: {missing} at {store_uri} ({first_line(error, 160)})") from None
            if not path.is_file():
                raise ConfigError(f"{what}: {missing} at {store_uri}")
            digest = file_sha256(path)
            os.replace(path, checkpoint)  # same folder: a rename, so the cache never holds half a file
            record_sha256(checkpoint, digest)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return checkpoint


def run_checkpoint(run_id: str, store_uri: str) -> Path:
    """The weights of MLflow run ``run_id``: the file its ``checkpoint`` tag names when it is on this machine,
    else its ``checkpoint/model.ckpt`` artifact, downloaded into :func:`cache_dir` (once per store and run)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(store_uri).get_run(run_id)
    except MlflowException as error:
        raise ConfigError(f"--run-id {run_id}: no such MLflow run at {store_uri} ({error.message[:160]})") from None
    tagged = run.data.tags.get("checkpoint")
    if tagged and Path(tagged).is_file():
        return Path(tagged)
    cached = cache_dir() / "runs" / store_key(store_uri) / folder_name(run_id) / "model.ckpt"
    return cached_artifact(
        cached,
        store_uri,
        run_id,
        f"--run-id {run_id}",
        f"the run has no {ARTIFACT} artifact (did it finish? runs trained before checkpoints were logged keep theirs "
        "only on the training machine)",
    )
