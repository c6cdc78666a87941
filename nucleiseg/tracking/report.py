"""``nucleiseg report``: a finished sweep as the paper's Tables II and III and Figures 7-11.

Reads the runs of one MLflow experiment (a study), aggregates over seeds (median, interquartile range, n) per
configuration, and writes Markdown + CSV tables and PNG + SVG figures to a folder. Failed or missing runs are
counted in every row, never dropped silently.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nucleiseg.errors import NucleisegError
from nucleiseg.models.factory import ENCODERS, configuration_label
from nucleiseg.tracking.mlflow_store import resolve_tracking_uri

TABLE3_METRICS = ("jaccard", "f1", "recall", "precision", "accuracy", "images_per_second")
INSTANCE_METRICS = tuple(
    f"{name}_{method}" for method in ("components", "watershed") for name in ("aji", "pq", "object_f1")
)
PUBLISHED = Path(__file__).resolve().parents[2] / "experiments" / "paper" / "published.csv"


class ReportError(NucleisegError):
    """The study cannot be reported (no such experiment, no finished run, output folder in the way)."""


def table_one_order() -> list[str]:
    """Configuration labels in the paper's Table I order: plain U-Nets, then each encoder without/with ImageNet."""
    labels = []
    for encoder, spec in ENCODERS.items():
        labels.append(configuration_label(encoder, False))
        if spec.has_imagenet_weights:
            labels.append(configuration_label(encoder, True))
    return labels


def load_runs(tracking_uri: str, study: str) -> tuple[pd.DataFrame, Any]:
    """One row per MLflow run of ``study``: tags, status and final metrics."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        raise ReportError(f"no MLflow experiment named {study!r} at {tracking_uri}; train with study={study} first")
    rows = []
    for run in client.search_runs([experiment.experiment_id], max_results=50000):
        tags, metrics = run.data.tags, run.data.metrics
        rows.append(
            {
                "run_id": run.info.run_id,
                "run_name": run.info.run_name,
                "status": run.info.status,
                "configuration": tags.get("configuration", "?"),
                "seed": tags.get("seed"),
                "checkpoint": tags.get("checkpoint"),
                "data_folder": tags.get("data_folder"),
                "failure_reason": tags.get("failure_reason", ""),
                "train_loss": metrics.get("train/loss"),
                "val_loss": metrics.get("val/loss"),
                **{name: metrics.get(f"test/{name}") for name in TABLE3_METRICS + INSTANCE_METRICS},
            }
        )
    return pd.DataFrame(rows), client


def _order(frame: pd.DataFrame) -> pd.DataFrame:
    order = {label: index for index, label in enumerate(table_one_order())}
    return frame.sort_values("configuration", key=lambda s: s.map(lambda c: order.get(c, len(order)))).reset_index(
        drop=True
    )


def _counts(runs: pd.DataFrame) -> pd.DataFrame:
    status = runs.groupby("configuration")["status"]
    return pd.DataFrame(
        {
            "n": status.apply(lambda s: int((s == "FINISHED").sum())),
            "n_failed": status.apply(lambda s: int((s == "FAILED").sum())),
            "n_other": status.apply(lambda s: int((~s.isin(["FINISHED", "FAILED"])).sum())),
        }
    )


def table_two(runs: pd.DataFrame) -> pd.DataFrame:
    """Median final training and validation loss per configuration over finished seeds (paper Table II)."""
    finished = runs[runs.status == "FINISHED"]
    medians = finished.groupby("configuration")[["train_loss", "val_loss"]].median()
    table = _counts(runs).join(medians, how="left").reset_index()
    return _order(table)[["configuration", "train_loss", "val_loss", "n", "n_failed", "n_other"]]


def table_three(runs: pd.DataFrame, published: pd.DataFrame | None = None) -> pd.DataFrame:
    """Median, IQR and n of each test metric per configuration, beside the published median (paper Table III)."""
    finished = runs[runs.status == "FINISHED"]
    grouped = finished.groupby("configuration")
    table = _counts(runs)
    for name in TABLE3_METRICS:
        table[name] = grouped[name].median()
        table[f"{name}_iqr"] = grouped[name].quantile(0.75) - grouped[name].quantile(0.25)
        if published is not None and name in published:
            table[f"{name}_paper"] = published.set_index("configuration")[name].reindex(table.index)
            table[f"{name}_diff"] = table[name] - table[f"{name}_paper"]
    return _order(table.reset_index())


def table_instances(runs: pd.DataFrame) -> pd.DataFrame:
    """Beyond the paper: median AJI, PQ and object F1 per configuration, without and with watershed."""
    finished = runs[runs.status == "FINISHED"]
    table = _counts(runs).join(finished.groupby("configuration")[list(INSTANCE_METRICS)].median(), how="left")
    return _order(table.reset_index())


def read_published(path: Path = PUBLISHED) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.is_file() else None


def loss_curves(client, runs: pd.DataFrame, key: str) -> pd.DataFrame:
    """Median over finished seeds of ``key`` per epoch and configuration: columns epoch, configuration, value."""
    rows = []
    for run in runs[runs.status == "FINISHED"].itertuples():
        for point in client.get_metric_history(run.run_id, key):
            rows.append({"configuration": run.configuration, "epoch": point.step, "value": point.value})
    if not rows:
        return pd.DataFrame(columns=["configuration", "epoch", "value"])
    curves = pd.DataFrame(rows).groupby(["configuration", "epoch"], as_index=False)["value"].median()
    return curves


def _markdown(frame: pd.DataFrame, digits: int = 3) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float | np.floating):
            return "-" if np.isnan(value) else f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def plot_curves(curves: pd.DataFrame, title: str, ylabel: str, stem: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    order = [c for c in table_one_order() if c in set(curves.configuration)]
    order += sorted(set(curves.configuration) - set(order))
    for configuration in order:
        line = curves[curves.configuration == configuration].sort_values("epoch")
        axis.plot(line.epoch + 1, line.value, marker=".", label=configuration)
    axis.set_xlabel("epoch")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2)
    return _save(figure, stem, dpi=150)


def _save(figure, stem: Path, dpi: int) -> list[Path]:
    """Save ``figure`` as ``stem.png`` and ``stem.svg``, then free it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return paths


def prediction_figure(
    runs: pd.DataFrame, configurations: list[str], image_index: int, stem: Path, settings=None
) -> list[Path]:
    """Image, ground truth, prediction and error overlay of one test image for each configuration (Figs 9-11)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nucleiseg.data.datamodule import load_split
    from nucleiseg.evaluate import split_source
    from nucleiseg.inference.session import InferenceSession
    from nucleiseg.tracking.overlays import error_overlay

    chosen = []
    for configuration in configurations:
        candidates = runs[(runs.configuration == configuration) & (runs.status == "FINISHED")].dropna(
            subset=["checkpoint", "data_folder"]
        )
        candidates = candidates[candidates.checkpoint.map(lambda p: Path(p).is_file())]
        if candidates.empty:
            raise ReportError(f"no finished run of {configuration!r} with its checkpoint on this machine")
        chosen.append(candidates.sort_values("seed").iloc[0])
    figure, axes = plt.subplots(len(chosen), 4, figsize=(12, 3.1 * len(chosen)), squeeze=False)
    for row, run in zip(axes, chosen, strict=True):
        test = load_split(run.data_folder, "test")
        if not 0 <= image_index < len(test):
            raise ReportError(f"--figure-image {image_index}: the test split has {len(test)} images")
        item = test[image_index]
        image, truth = item["image"].permute(1, 2, 0).numpy(), item["mask"].numpy() > 0
        session = InferenceSession.from_checkpoint(run.checkpoint, settings)
        _, normalise = split_source(session, run.data_folder)
        prediction = session.predict(image, 1.0, normalise).probability >= session.threshold
        panels = [
            (image, "image"),
            (truth, "ground truth"),
            (prediction, f"{run.configuration}"),
            (error_overlay(image, truth, prediction), "errors: FP red, FN blue"),
        ]
        for axis, (picture, title) in zip(row, panels, strict=True):
            axis.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
            axis.set_title(title, fontsize=8)
            axis.axis("off")
    return _save(figure, stem, dpi=120)


def write_report(
    tracking_uri: str,
    study: str,
    out: str | Path,
    overwrite: bool = False,
    figure_configurations: list[str] | None = None,
    figure_image: int = 0,
    published_path: Path = PUBLISHED,
) -> Path:
    """Write tables and figures of ``study`` into ``out`` (a new folder unless ``overwrite``); return it."""
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ReportError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    runs, client = load_runs(tracking_uri, study)
    if runs.empty or not (runs.status == "FINISHED").any():
        counts = runs.status.value_counts().to_dict() if not runs.empty else {}
        raise ReportError(f"experiment {study!r} has no finished run (runs by status: {counts or 'none'})")
    scratch = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        published = read_published(published_path)
        table2, table3 = table_two(runs), table_three(runs, published)
        table2.to_csv(scratch / "table2_losses.csv", index=False)
        instances = table_instances(runs)
        instances.to_csv(scratch / "table4_instances.csv", index=False)
        table3.to_csv(scratch / "table3_metrics.csv", index=False)
        runs.drop(columns=["checkpoint", "data_folder"]).to_csv(scratch / "runs.csv", index=False)
        plot_curves(
            loss_curves(client, runs, "train/loss"),
            f"{study}: training loss (median over seeds)",
            "BCE + Dice loss",
            scratch / "fig7_train_loss",
        )
        plot_curves(
            loss_curves(client, runs, "val/loss"),
            f"{study}: validation loss (median over seeds)",
            "BCE + Dice loss",
            scratch / "fig8_val_loss",
        )
        sections = [
            f"# Report of study `{study}`",
            "",
            f"{int((runs.status == 'FINISHED').sum())} finished, {int((runs.status == 'FAILED').sum())} "
            f"failed, {int((~runs.status.isin(['FINISHED', 'FAILED'])).sum())} other runs.",
            "",
            "## Table II: final losses (median over seeds)",
            "",
            _markdown(table2),
            "",
            "## Table III: test metrics on the held-out split (median, IQR, n; `_paper` = published, "
            "`_diff` = ours - published)",
            "",
            _markdown(table3),
            "",
            "## Individual nuclei (beyond the paper): median AJI, PQ and object F1 at IoU 0.5, connected "
            "components vs watershed",
            "",
            _markdown(instances),
            "",
            "## Figures",
            "",
            "![training loss](fig7_train_loss.png)",
            "",
            "![validation loss](fig8_val_loss.png)",
            "",
        ]
        failed = runs[runs.status == "FAILED"]
        if not failed.empty:
            sections += [
                "## Failed runs",
                "",
                _markdown(failed[["run_name", "configuration", "seed", "failure_reason"]]),
                "",
            ]
        if figure_configurations:
            prediction_figure(runs, figure_configurations, figure_image, scratch / "fig9_predictions")
            sections += ["![predictions](fig9_predictions.png)", ""]
        (scratch / "report.md").write_text("\n".join(sections))
        if out.exists():
            shutil.rmtree(out)
        os.replace(scratch, out)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return out
