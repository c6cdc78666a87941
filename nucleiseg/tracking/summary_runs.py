"""The design card's "MLflow logging median losses and metrics": one summary run per configuration in the
study's experiment (tag ``summary=true``) holding the medians, IQRs, ranges and seed counts as metrics, so the
MLflow UI compares configurations by their medians. Written at the end of a sweep and by ``nucleiseg report``;
earlier summary runs of the study are replaced, the per-seed runs are never touched."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import pandas as pd

from nucleiseg.tracking.study import INSTANCE_METRICS, SUMMARY_TAG, TABLE2_METRICS, TABLE3_METRICS, aggregate

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

SUMMARISED = TABLE2_METRICS + TABLE3_METRICS + INSTANCE_METRICS
COUNTS = ("n", "n_failed", "n_killed", "n_other")


def summary_metrics(row: dict) -> dict[str, float]:
    """``{"jaccard/median": .., "jaccard/iqr": .., "jaccard/min": .., "jaccard/max": .., ..., "n": ..}``."""
    metrics = {name: float(row[name]) for name in COUNTS}
    for name in SUMMARISED:
        for statistic, column in (
            ("median", name),
            ("iqr", f"{name}_iqr"),
            ("min", f"{name}_min"),
            ("max", f"{name}_max"),
        ):
            value = row.get(column)
            if value is not None and not math.isnan(value):
                metrics[f"{name}/{statistic}"] = float(value)
    return metrics


def write_summary_runs(client: MlflowClient, study: str, runs: pd.DataFrame) -> list[str]:
    """Replace the summary runs of ``study`` with one per configuration; return their ids. A configuration whose
    seeds all failed or were killed gets one too, with its counts and no medians: the UI shows it was tried."""
    from mlflow.entities import Metric

    experiment = client.get_experiment_by_name(study)
    for old in client.search_runs([experiment.experiment_id], filter_string=f"tags.{SUMMARY_TAG} = 'true'"):
        client.delete_run(old.info.run_id)
    created = []
    for row in aggregate(runs, SUMMARISED).to_dict("records"):
        name = f"summary {row['configuration']}"
        run = client.create_run(
            experiment.experiment_id, run_name=name, tags={SUMMARY_TAG: "true", "configuration": row["configuration"]}
        )
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, 0) for key, value in summary_metrics(row).items()]
        client.log_batch(run.info.run_id, metrics=metrics)
        client.set_terminated(run.info.run_id, "FINISHED")
        created.append(run.info.run_id)
    return created
