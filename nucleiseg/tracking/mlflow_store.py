"""Where MLflow data lives and what each run records.

Default: an embedded SQLite store (``mlflow.db``) and an artifact folder (``mlartifacts/``) in the project
root; no server. ``MLFLOW_TRACKING_URI`` (or ``logger.tracking_uri``) points runs at a team server instead.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def resolve_tracking_uri(uri: str) -> str:
    """Make a relative ``sqlite:///`` path absolute, so every job of a sweep writes to the same file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).expanduser().resolve())
    return uri


def resolve_artifact_location(location: str | None) -> str | None:
    """Absolute ``file:`` URI for a local artifact folder; other URIs (s3://, mlflow-artifacts:) unchanged."""
    if location is None or "://" in location or location.startswith("mlflow-artifacts:"):
        return location
    return Path(location).expanduser().resolve().as_uri()


def artifact_location(logger_cfg: Mapping) -> str | None:
    """Where new experiments keep their artifacts: ``logger.artifact_location`` for a local store; nothing for a
    tracking server, which serves them itself (``mlflow-artifacts:``), so every machine reaches them."""
    uri = tracking_uri(logger_cfg)
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    return resolve_artifact_location(logger_cfg["artifact_location"])


def tracking_uri(logger_cfg: Mapping) -> str:
    """The store runs go to: ``MLFLOW_TRACKING_URI`` when set, else ``logger.tracking_uri`` (made absolute)."""
    return resolve_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or logger_cfg["tracking_uri"])


# MLflow 3's UI asks each experiment whether it is GenAI or model training; ours are model training. (The UI of
# MLflow 3.17 follows its own "workflow type" switch instead: the README shows the URL that opens the runs table.)
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def use_experiment(uri: str, name: str, artifact_location: str | None = None) -> None:
    """Point the ``mlflow`` fluent API at experiment ``name`` of the store at ``uri``, creating it (with
    ``artifact_location`` when given) when it does not exist yet."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(resolve_tracking_uri(uri))
    if mlflow.get_experiment_by_name(name) is None:
        try:
            mlflow.create_experiment(
                name, artifact_location=resolve_artifact_location(artifact_location), tags=EXPERIMENT_TAGS
            )
        except MlflowException:  # created meanwhile by a parallel job: use it
            pass
    mlflow.set_experiment(name)


def flatten(config: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become their string form (MLflow params are strings)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def git_commit(folder: str | Path = ".") -> str:
    """Commit hash of the code being run (with ``-dirty`` when there are uncommitted changes), or ``unknown``."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def logged_to(uri: str, experiment: str) -> str:
    """One line saying where results went: the MLflow experiment and store (a SQLite store's file by its absolute
    path, a server without the password of its address)."""
    from urllib.parse import urlsplit, urlunsplit

    uri = resolve_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        where = f"{uri} (the file {uri.removeprefix('sqlite:///')})"
    else:
        parts = urlsplit(uri)
        if parts.password:
            parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
        where = urlunsplit(parts)
    return (
        f"results logged to MLflow experiment {experiment!r} at {where}; "
        "set MLFLOW_TRACKING_URI or logger.tracking_uri=URI to log elsewhere"
    )
