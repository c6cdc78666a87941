"""MLflow's model registry for nucleiseg models: a finished run registers its checkpoint folder (``model.ckpt`` and
``MODEL_CARD.md``) under a name, the card as the version's description, and ``--model models:/NAME/VERSION`` (or
``models:/NAME/latest``) loads it on any machine that reaches the tracking store."""

from __future__ import annotations

import logging
from pathlib import Path

from nucleiseg.util.errors import NucleisegError

log = logging.getLogger(__name__)


def register_model(uri: str, run_id: str, name: str, description: str) -> str:
    """Register run ``run_id``'s ``checkpoint`` artifacts as a new version of ``name``; returns the version. A run
    registered before (a resumed finish) keeps its one version."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="nucleiseg nucleus segmentation models (see each version)")
    for version in client.search_model_versions(f"name='{name}'"):
        if version.run_id == run_id:
            return str(version.version)
    version = client.create_model_version(
        name, source=f"runs:/{run_id}/checkpoint", run_id=run_id, description=description[:5000]
    )
    log.info("registered the model as models:/%s/%s in MLflow's model registry", name, version.version)
    return str(version.version)


def registered_checkpoint(uri: str, model_uri: str, cache: Path) -> Path:
    """``models:/NAME/VERSION|latest`` -> the registered ``model.ckpt``, downloaded into ``cache`` once."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    parts = model_uri.removeprefix("models:/").split("/")
    if len(parts) != 2 or not all(parts):
        raise NucleisegError(f"--model {model_uri}: expected models:/NAME/VERSION (or models:/NAME/latest)")
    name, version = parts
    client = MlflowClient(uri)
    try:
        if version == "latest":
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise MlflowException(f"no version of {name}")
            version = str(max(int(v.version) for v in versions))
        found = client.get_model_version(name, version)
    except MlflowException as error:
        known = sorted(m.name for m in client.search_registered_models())
        raise NucleisegError(
            f"--model {model_uri}: not in the model registry at {uri} ({str(error).splitlines()[0][:120]}); "
            f"registered models: {', '.join(known) or 'none'}"
        ) from None
    target = cache / "registry" / name / version
    checkpoint = target / "model.ckpt"
    if not checkpoint.is_file():
        import mlflow.artifacts

        target.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(
            run_id=found.run_id, artifact_path="checkpoint/model.ckpt", dst_path=str(target), tracking_uri=uri
        )
        downloaded = target / "checkpoint" / "model.ckpt"
        if downloaded.is_file():
            downloaded.replace(checkpoint)
    if not checkpoint.is_file():
        raise NucleisegError(f"--model {model_uri}: version {version} has no checkpoint/model.ckpt artifact")
    return checkpoint
