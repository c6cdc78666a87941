"""One-screen summaries at the end of a run and of a sweep (rich tables)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

PIXEL_SHOWN = ("test/jaccard", "test/f1", "test/recall", "test/precision", "test/accuracy", "loss/test")
INSTANCE_SHOWN = ("aji", "aji_plus", "pq", "object_f1", "n_predicted_nuclei", "n_true_nuclei")


def shown_metrics(metrics: dict, method: str | None) -> list[tuple[str, str]]:
    """``(label, key)`` rows of a run's summary: pixel metrics, then the instance metrics of the model's own
    separation method (what evaluate and predict use), then the other methods' AJI for comparison."""
    from nucleiseg.postprocess.instances import METHODS

    rows = [(key, key) for key in PIXEL_SHOWN]
    if method:
        rows += [(f"test/{name}_{method} (its method)", f"test/{name}_{method}") for name in INSTANCE_SHOWN]
    rows += [(f"test/aji_{other}", f"test/aji_{other}") for other in METHODS if other != method]
    rows.append(("test/images_per_second", "test/images_per_second"))
    return [(label, key) for label, key in rows if key in metrics]


def ui_url(experiment_id: str, host: str = "http://127.0.0.1:5000") -> str:
    """The MLflow UI page of an experiment's runs table. MLflow 3's UI opens experiments on its GenAI pages
    unless the URL asks for model training (the experiment tag it once read is ignored since 3.x)."""
    return f"{host}/#/experiments/{experiment_id}?workflowType=machine_learning"


def print_run_summary(
    name: str,
    cfg: Any,
    metrics: dict,
    final: dict,
    run_dir: Path,
    run_id: str,
    experiment_id: str | None = None,
    hparams: dict | None = None,
    console: Console | None = None,
) -> None:
    from nucleiseg.util.console import make_console

    console = console or make_console()
    console.print(f"run {name} (study {cfg.study})")
    table = Table(show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("loss/train", "loss/val"):
        if key in final:
            table.add_row(f"final {key}", f"{final[key]:.4f}")
    method = ((hparams or {}).get("postprocess") or {}).get("method")
    for label, key in shown_metrics(metrics, method):
        value = metrics[key]
        table.add_row(label, str(int(value)) if key.split("/")[1].startswith("n_") else f"{value:.4f}")
    table.add_row("train time", f"{metrics.get('train_seconds', float('nan')):.1f} s")
    console.print(table)
    console.print(f"checkpoints: {run_dir / 'checkpoints'}   MLflow run: {run_id}")
    if experiment_id is not None:
        console.print(f"MLflow UI (after `mlflow ui`): {ui_url(experiment_id)}")


def print_sweep_summary(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    """Table of a sweep's jobs: finished ones with test Jaccard/F1 and time, failed ones with the reason."""
    from nucleiseg.util.console import make_console

    console = console or make_console()
    console.print("sweep summary")
    table = Table()
    for column in ("run", "status", "jaccard", "f1", "time s"):
        table.add_column(column, justify="left" if column in ("run", "status") else "right")
    for row in rows:
        if row["status"] == "finished":
            table.add_row(
                row["run"],
                row["status"],
                f"{row.get('test/jaccard', float('nan')):.4f}",
                f"{row.get('test/f1', float('nan')):.4f}",
                f"{row.get('train_seconds', 0):.0f}",
            )
        else:
            table.add_row(row["run"], f"[red]{row['status']}[/red]", "", "", "")
            table.add_row("", str(row.get("reason", ""))[:120], "", "", "")
    console.print(table)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "skipped", "failed", "killed", "planned")}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items() if n or s in ("finished", "failed")))
