"""An evaluation (``nucleiseg evaluate``) recorded as an MLflow run beside the training runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nucleiseg.inference.session import InferenceSession


def log_evaluation(
    tracking: str, study: str, session: InferenceSession, results: Mapping[str, Any], artifacts: str | None = None
) -> str:
    """Record an evaluation as an MLflow run of experiment ``study`` (artifacts under ``artifacts`` when the
    experiment is new); return its run id."""
    import mlflow

    from nucleiseg.tracking.mlflow_store import use_experiment

    use_experiment(tracking, study, artifacts)
    described = session.describe()
    name = session.path.parent.parent.name if session.path and session.path.name == "model.ckpt" else session.source
    with mlflow.start_run(run_name=f"evaluate-{name}") as active:
        mlflow.set_tags(
            {
                "checkpoint": str(session.path.resolve()) if session.path else session.source,
                "encoder": str(described["encoder"]),
                "head": session.head,
                "pretrained": str(session.hparams.get("pretrained", False)).lower(),
                "evaluated_on": str(results["evaluated_on"]),
                "device": described["device"],
                "precision": described["precision"],
                "postprocess.tuned_on": described["tuned_on"],
                **{f"speed.{k}": str(v) for k, v in (results.get("speed") or {}).items() if k != "images_per_second"},
            }
        )
        mlflow.log_params({f"postprocess.{k}": v for k, v in session.postprocess.as_dict().items()})
        mlflow.log_param("threshold", session.threshold)
        mlflow.log_metrics({k: float(v) for k, v in results.items() if isinstance(v, float | int)})
        return active.info.run_id
