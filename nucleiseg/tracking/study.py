"""A study (one MLflow experiment) as a table of runs, and its aggregation over seeds.

A run counts as *finished* only when it has its ``nucleiseg.done`` tag (set after ``done.json``) and every test
metric of Table III: a run killed in its test phase, or one whose test metrics never arrived, is ``n_other``,
never a finished seed. Summary runs (tag ``summary=true``, the medians written back to MLflow) are not runs of
the study and are left out.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from nucleiseg.models.factory import ENCODERS, HEAD_LABELS, configuration_label
from nucleiseg.postprocess.instances import METHODS
from nucleiseg.tracking.classes import typed_columns
from nucleiseg.tracking.mlflow_store import resolve_tracking_uri
from nucleiseg.util.errors import NucleisegError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

TABLE3_METRICS = ("jaccard", "f1", "recall", "precision", "accuracy", "images_per_second")
TABLE2_METRICS = ("train_loss", "val_loss")
INSTANCE_NAMES = ("aji", "aji_plus", "pq", "object_f1")
INSTANCE_METRICS = tuple(f"{name}_{method}" for method in METHODS for name in INSTANCE_NAMES)
COUNT_METRICS = tuple(f"{kind}_{method}" for method in METHODS for kind in ("n_true_nuclei", "n_predicted_nuclei"))
DONE_TAG = "nucleiseg.done"  # set after done.json: a run with all its outputs (the report's "finished")
SUMMARY_TAG = "summary"  # the medians of a configuration written back to MLflow (not a run of the study)
SUPERSEDED_TAG = "nucleiseg.superseded"  # a finished run trained again on purpose (skip_finished=false)


class ReportError(NucleisegError):
    """The study cannot be reported (no such experiment, no finished run, output folder in the way)."""


def row_label(encoder: str | None, pretrained: bool, head: str | None) -> str:
    """The configuration's name in the tables: the paper's (Table I) and, for another head, ``+ distance head``,
    ``+ HV head (HoVer-Net)``, ``+ StarDist head`` (models the paper did not have, never compared with its
    published rows)."""
    if encoder not in ENCODERS:
        return str(encoder)
    return configuration_label(encoder, pretrained, head or "binary")


def table_one_order() -> list[str]:
    """Row labels in the paper's Table I order (each encoder without, then with ImageNet), binary heads first,
    then the same with the distance head."""
    labels = []
    for head in ("binary", *HEAD_LABELS):
        for encoder, spec in ENCODERS.items():
            for pretrained in (False, True) if spec.has_imagenet_weights else (False,):
                labels.append(row_label(encoder, pretrained, head))
    return labels


def _finished(status: str, tags: dict[str, str], metrics: dict[str, float]) -> bool:
    return status == "FINISHED" and tags.get(DONE_TAG) == "true" and all(f"test/{m}" in metrics for m in TABLE3_METRICS)


def load_runs(tracking_uri: str, study: str) -> tuple[pd.DataFrame, Any]:
    """One row per MLflow run of ``study`` (summary runs excluded): tags, status, final and test metrics."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        raise ReportError(f"no MLflow experiment named {study!r} at {tracking_uri}; train with study={study} first")
    rows = []
    for run in client.search_runs([experiment.experiment_id], max_results=50000):
        tags, metrics = run.data.tags, run.data.metrics
        if tags.get(SUMMARY_TAG) == "true" or tags.get(SUPERSEDED_TAG) == "true":
            continue  # summaries are not runs; a superseded run was trained again (skip_finished=false)
        pretrained = tags.get("pretrained") == "true"
        rows.append(
            {
                "run_id": run.info.run_id,
                "run_name": run.info.run_name,
                "status": run.info.status,
                "finished": _finished(run.info.status, tags, metrics),
                "configuration": row_label(tags.get("encoder"), pretrained, tags.get("head", "binary"))
                if "encoder" in tags
                else tags.get("configuration", "?"),
                "encoder": tags.get("encoder"),
                "pretrained": pretrained,
                "head": tags.get("head", "binary"),
                "seed": tags.get("seed"),
                "data_split": tags.get("data_split", "paper-seed0"),
                "protocol": tags.get("protocol", "unknown"),
                "protocol_differences": tags.get("protocol_differences", ""),
                "variant": _variant(run.info.run_name or "", tags),
                "variant_key": tags.get("configuration_hash") or _variant(run.info.run_name or "", tags),
                "checkpoint": tags.get("checkpoint"),
                "data_folder": tags.get("data_folder"),
                "failure_reason": tags.get("failure_reason", ""),
                # loss/train, loss/val (earlier versions logged train/loss, val/loss)
                "train_loss": metrics.get("loss/train", metrics.get("train/loss")),
                "val_loss": metrics.get("loss/val", metrics.get("val/loss")),
                **{name: metrics.get(f"test/{name}") for name in TABLE3_METRICS + INSTANCE_METRICS + COUNT_METRICS},
                **{key[5:]: value for key, value in metrics.items() if key[5:] in typed_columns([key[5:]])},
                **{key: value for key, value in tags.items() if key.startswith("tuned.")},
            }
        )
    columns = ["run_id", "run_name", "status", "finished", "configuration", "seed", "data_split", "protocol"]
    frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)
    for name in TABLE2_METRICS + TABLE3_METRICS + INSTANCE_METRICS + COUNT_METRICS:
        if name in frame:  # runs without a metric give None: numeric columns with NaN, not objects
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(float)
    if "finished" in frame:
        frame["finished"] = frame["finished"].astype(bool)
    if "variant" in frame:
        frame["configuration"] = name_variants(frame)
    return frame, client


def _variant(run_name: str, tags: dict[str, str]) -> str:
    """The run's variant: its ``variant`` tag, else (runs logged before the tag) the overrides its name carries
    after ``ENCODER-imagenet|scratch-seedK-`` (the seeds and TNBC split left out)."""
    if "variant" in tags:
        return tags["variant"]
    found = re.match(r"^[\w.]+-(?:imagenet|scratch)-seed\d+-(.+)$", run_name)
    if not found:
        return ""
    parts = [p for p in found.group(1).split(",") if not p.startswith(("data.protocol.seed=", "data.protocol.split="))]
    return ",".join(parts)


def name_variants(frame: pd.DataFrame) -> pd.Series:
    """Row labels that keep apart runs of different configurations: a configuration's name alone when all its runs
    share one configuration (whatever the study's common overrides), else its name plus ``[overrides]`` per
    variant, plus ``(config HASH)`` where two variants would still share a label."""
    keys = frame["variant_key"].fillna("")
    distinct = keys.groupby(frame["configuration"]).nunique()
    labels = [
        f"{c} [{v}]" if v and distinct[c] > 1 else c
        for c, v in zip(frame["configuration"], frame["variant"], strict=True)
    ]
    table = pd.DataFrame({"label": labels, "key": keys})
    shared = table.groupby("label")["key"].nunique()
    return pd.Series(
        [
            f"{label} (config {key[:8]})" if shared[label] > 1 else label
            for label, key in zip(table.label, table.key, strict=True)
        ],
        index=frame.index,
    )


def order_rows(frame: pd.DataFrame) -> pd.DataFrame:
    order = {label: index for index, label in enumerate(table_one_order())}
    key = frame["configuration"].map(lambda c: order.get(c, len(order)))
    return (
        frame.assign(_order=key).sort_values(["_order", "configuration"]).drop(columns="_order").reset_index(drop=True)
    )


def counts(runs: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: ``n`` finished seeds, ``n_failed``, ``n_killed``, ``n_other`` (running, or ended
    without all their outputs)."""
    grouped = runs.groupby("configuration")
    return pd.DataFrame(
        {
            "n": grouped["finished"].sum().astype(int),
            "n_failed": grouped["status"].apply(lambda s: int((s == "FAILED").sum())),
            "n_killed": grouped["status"].apply(lambda s: int((s == "KILLED").sum())),
            "n_other": grouped.apply(
                lambda g: int((~g.finished & ~g.status.isin(["FAILED", "KILLED"])).sum()), include_groups=False
            ),
        }
    )


def aggregate(runs: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    """Median, IQR, min and max over finished seeds of each metric, per configuration, with the counts."""
    finished = runs[runs.finished]
    table = counts(runs)
    grouped = finished.groupby("configuration")
    columns = {}
    for name in metrics:
        if name not in finished:
            continue
        values = grouped[name]
        columns[name] = values.median()
        columns[f"{name}_iqr"] = values.quantile(0.75) - values.quantile(0.25)
        columns[f"{name}_min"] = values.min()
        columns[f"{name}_max"] = values.max()
    table = pd.concat([table, pd.DataFrame(columns, index=table.index)], axis=1)  # at once: no fragmented frame
    return order_rows(table.reset_index())


def paper_protocol(runs: pd.DataFrame) -> tuple[bool, list[str]]:
    """Whether every finished run followed the paper's protocol, and the differences found otherwise."""
    finished = runs[runs.finished]
    if finished.empty:
        return False, ["no finished run"]
    differences = sorted({d for text in finished.protocol_differences for d in str(text).split("; ") if d})
    if (finished.protocol == "unknown").any():
        differences.append("runs recorded before the protocol was tagged (protocol unknown)")
    return bool((finished.protocol == "paper").all()), differences


def loss_curves(client: MlflowClient, runs: pd.DataFrame, key: str) -> pd.DataFrame:
    """Median over finished seeds of ``key`` per epoch and configuration: columns epoch, configuration, value."""
    rows = []
    for run in runs[runs.finished].itertuples():
        for point in client.get_metric_history(run.run_id, key):
            rows.append({"configuration": run.configuration, "epoch": point.step, "value": point.value})
    if not rows:
        return pd.DataFrame(columns=["configuration", "epoch", "value"])
    return pd.DataFrame(rows).groupby(["configuration", "epoch"], as_index=False)["value"].median()


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, bool | np.bool_):
            return "yes" if value else "no"
        if isinstance(value, float | np.floating):
            return "-" if np.isnan(value) else f"{value:.{digits}f}"
        return "-" if value is None else str(value)

    if frame.empty:
        return "_No rows: no finished run reports these values._"
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


NOT_STUDIES = ("Default", "benchmark", "benchmark-loop", "evaluate")


def resolve_study(tracking_uri: str, name: str | None = None) -> str:
    """``name``, or the study (MLflow experiment) with the most recent training run: what a notebook opens when
    it is not told which study to read."""
    if name:
        return name
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    latest: tuple[int, str] | None = None
    for experiment in client.search_experiments():
        if experiment.name in NOT_STUDIES:
            continue
        runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
        if runs and (latest is None or runs[0].info.start_time > latest[0]):
            latest = (runs[0].info.start_time, experiment.name)
    if latest is None:
        raise ReportError(
            f"no study with runs at {tracking_uri}; train one first (python train.py experiment=quickstart)"
        )
    return latest[1]
