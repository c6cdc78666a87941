"""``nucleiseg tune-postprocess``: tune the separation into nuclei on validation after training, so that a run never
disagrees with itself.

- A finished run's ``model.ckpt`` (its folder holds ``done.json``): the new values go into the checkpoint, and the
  run's test split is scored again with them, so its test metrics (``done.json``, MLflow), ``MODEL_CARD.md`` and
  ``tuned.*`` tags all describe the values the checkpoint now carries; the values replaced are kept in
  ``done.json`` under ``retuned``. When the test split cannot be scored (its prepared data moved), nothing is
  changed: ``--out NEW.ckpt`` writes the re-tuned model to a new file and leaves the run's record as it is.
- ``--out NEW.ckpt``: a new checkpoint with the new values (the source file and its run untouched).
- Any other checkpoint: updated in place.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from nucleiseg.evaluation.tuning import TuneSettings, TuningResult, tune, tuning_tags
from nucleiseg.inference.checkpoint import update_hyperparameters
from nucleiseg.inference.session import InferenceSession, iterate_split
from nucleiseg.inference.settings import InferenceSettings
from nucleiseg.util.errors import ConfigError
from nucleiseg.util.writing import write_bytes_atomic, write_json_atomic


def run_folder_of(checkpoint: Path) -> Path | None:
    """The run folder of a finished run's ``checkpoints/model.ckpt``, else None."""
    folder = checkpoint.resolve().parent.parent
    if checkpoint.name == "model.ckpt" and (folder / "done.json").is_file():
        return folder
    return None


def _test_folder(session: InferenceSession) -> Path | None:
    data = session.hparams.get("data") or {}
    if not (data.get("counts") or {}).get("test"):
        return None  # a release model: no held-out split to score
    folder = Path(str(data.get("folder")))
    if not (folder / "manifest.json").is_file():
        raise ConfigError(
            f"{session.source}: its run's test split ({folder}) is not there to be scored again with the new values, "
            "so the run's record would disagree with its checkpoint; write the re-tuned model to a new file with "
            "--out NEW.ckpt (the run stays as it is), or prepare the data again"
        )
    return folder


def retune(
    session: InferenceSession,
    checkpoint: Path,
    items: Iterable[tuple[str, Any, Any]],
    settings: TuneSettings,
    iou_threshold: float,
    normalise: bool,
    split: str,
    out: Path | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Tune, then record the result where it belongs (see the module docstring); returns a JSON-able summary."""
    run_folder = None if out is not None else run_folder_of(checkpoint)
    test_folder = _test_folder(session) if run_folder is not None else None  # refuses before any work
    if out is not None and out.exists():
        raise ConfigError(f"--out {out}: exists; choose a new file name")
    result = tune(session, items, settings, iou_threshold, normalise)
    target = checkpoint
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(checkpoint, out.with_name(f".{out.name}.partial"))
        target = out.with_name(f".{out.name}.partial")
    previous = update_hyperparameters(target, result.hparams(split))
    if out is not None:
        target.replace(out)
    summary = {
        "checkpoint": str(out or checkpoint),
        "tuned_on": split,
        "n_images": result.n_images,
        "objective": result.objective,
        "score": result.score,
        "untuned_score": result.untuned_score,
        "postprocess": result.postprocess.as_dict(),
        "threshold": result.threshold,
        "previous": previous.get("postprocess"),
    }
    if run_folder is not None:
        # the checkpoint as it now is: its carried values, nothing the user gave for the search
        carried = replace(session.settings, threshold=None, postprocess={})
        summary["test"] = _rescore_run(
            run_folder, checkpoint, carried, test_folder, result, split, previous, tracking_uri, iou_threshold
        )
    return summary


def _rescore_run(
    run_folder: Path,
    checkpoint: Path,
    settings: InferenceSettings,
    test_folder: Path | None,
    result: TuningResult,
    split: str,
    previous: dict[str, Any],
    tracking_uri: str | None,
    iou_threshold: float,
) -> dict[str, float]:
    """Score the run's test split with the checkpoint as it now is; rewrite done.json and the model card; send the
    new values to the run's MLflow run. Returns the new test metrics."""
    from nucleiseg.models.card import model_card

    session = InferenceSession.from_checkpoint(checkpoint, settings)
    metrics: dict[str, float] = {}
    if test_folder is not None:
        scored = session.evaluate(
            iterate_split(test_folder, "test"), "test", normalise=False, iou_threshold=iou_threshold
        )
        metrics = {k: float(v) for k, v in scored.items() if isinstance(v, float | int)}
    done_path = run_folder / "done.json"
    done = json.loads(done_path.read_text())
    done.setdefault("retuned", []).append(
        {"at": time.strftime("%Y-%m-%d %H:%M:%S"), "replaced": previous, "test_before": _test_only(done["metrics"])}
    )
    done["metrics"] = {**done["metrics"], **metrics}
    card = checkpoint.parent / "MODEL_CARD.md"
    write_bytes_atomic(
        card, model_card(session.hparams, done["metrics"], done["final_epoch_metrics"], done["name"]).encode()
    )
    write_json_atomic(done_path, done)
    run_id = session.hparams.get("mlflow_run_id") or done.get("run_id")
    if tracking_uri and run_id:
        _log_to_run(tracking_uri, run_id, result, split, metrics, checkpoint, card)
    return metrics


def _test_only(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k.startswith("test/")}


def _log_to_run(
    uri: str, run_id: str, result: TuningResult, split: str, metrics: dict[str, float], checkpoint: Path, card: Path
) -> None:
    """The run's MLflow record: new ``tuned.*`` tags, the new test values as the metrics' latest points, the
    checkpoint and card artifacts replaced."""
    from mlflow.tracking import MlflowClient

    from nucleiseg.evaluation.tuning import tuning_metrics

    client = MlflowClient(uri)
    for key, value in tuning_tags(result, split).items():
        client.set_tag(run_id, key, value)
    client.set_tag(run_id, "tuned.retuned", time.strftime("%Y-%m-%d %H:%M:%S"))
    new = {**tuning_metrics(result, split), **metrics}
    recorded = client.get_run(run_id).data.metrics
    for key, value in new.items():
        steps = [point.step for point in client.get_metric_history(run_id, key)] if key in recorded else []
        client.log_metric(run_id, key, value, step=max(steps, default=-1) + 1)  # the latest point: the new value
    client.log_artifact(run_id, str(checkpoint), "checkpoint")
    client.log_artifact(run_id, str(card), "checkpoint")
