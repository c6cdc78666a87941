"""Which model file a command or ``nucleiseg.segment`` runs: ``--run-id`` (a finished MLflow training run),
``models:/NAME/VERSION`` (MLflow's model registry), else a name, file or URL (:func:`nucleiseg.models.zoo.resolve`);
with none given, the default model, said once."""

from __future__ import annotations

import logging
from pathlib import Path

from nucleiseg.util.errors import ConfigError

log = logging.getLogger("nucleiseg")


def resolve_model(spec: str | None, run_id: str | None, overrides: list[str]) -> tuple[Path, str]:
    """``(model file, how to name it)``; ``overrides`` name the tracking store where one is needed."""
    if spec and run_id:
        raise ConfigError("give --model or --run-id, not both")
    if run_id or (spec or "").startswith("models:/"):
        from nucleiseg.config.compose import compose
        from nucleiseg.tracking.mlflow_store import tracking_uri

        uri = tracking_uri(compose(overrides).logger)
        if run_id:
            from nucleiseg.tracking.artifacts import run_checkpoint

            return run_checkpoint(run_id, uri), f"MLflow run {run_id}"
        from nucleiseg.models.zoo import cache_dir
        from nucleiseg.tracking.registry import registered_checkpoint

        return registered_checkpoint(uri, spec, cache_dir()), spec
    from nucleiseg.models.zoo import resolve

    path, label = resolve(spec)
    if spec is None:
        log.info(
            "no --model given: using %s; --model NAME|PATH|URL picks another (`nucleiseg models` lists them)", label
        )
    return path, label
