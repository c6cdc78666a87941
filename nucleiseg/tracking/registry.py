"""MLflow's model registry for nucleiseg models: a finished run registers its checkpoint folder (``model.ckpt`` and
``MODEL_CARD.md``) under a name, the card as the version's description, and ``--model models:/NAME/VERSION`` (or
``models:/NAME/latest``) loads it on any machine that reaches the tracking store."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from nucleiseg.tracking.artifacts import ARTIFACT, cached_artifact, folder_name, store_key
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
    """``models:/NAME/VERSION|latest`` -> the registered ``model.ckpt``, downloaded into ``cache`` once.

    The cache entry is keyed by the store (a hash of its tracking URI: another store's ``NAME/1`` is another model)
    and by the version's source (its run), and checked against the SHA-256 recorded when it was downloaded: a copy
    that changed since is downloaded again."""
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
    source = found.run_id or hashlib.sha256(str(found.source).encode()).hexdigest()[:32]
    entry = cache / "registry" / store_key(uri) / folder_name(name) / f"{folder_name(version)}-{source}"
    checkpoint = entry / "model.ckpt"
    return cached_artifact(
        checkpoint, uri, found.run_id, f"--model {model_uri}", f"version {version} has no {ARTIFACT} artifact"
    )
