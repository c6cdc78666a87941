"""One-screen summaries at the end of a run and of a sweep (rich tables)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

SHOWN = (
    "test/jaccard",
    "test/f1",
    "test/recall",
    "test/precision",
    "test/accuracy",
    "loss/test",
    "test/aji_components",
    "test/aji_watershed",
    "test/pq_watershed",
    "test/object_f1_watershed",
    "test/images_per_second",
)


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
    console: Console | None = None,
) -> None:
    console = console or Console()
    table = Table(title=f"run {name} (study {cfg.study})", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("loss/train", "loss/val"):
        if key in final:
            table.add_row(f"final {key}", f"{final[key]:.4f}")
    for key in SHOWN:
        if key in metrics:
            table.add_row(key, f"{metrics[key]:.4f}")
    table.add_row("train time", f"{metrics.get('train_seconds', float('nan')):.1f} s")
    console.print(table)
    console.print(f"checkpoints: {run_dir / 'checkpoints'}   MLflow run: {run_id}")
    if experiment_id is not None:
        console.print(f"MLflow UI (after `mlflow ui`): {ui_url(experiment_id)}")


def print_sweep_summary(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    """Table of a sweep's jobs: finished ones with test Jaccard/F1 and time, failed ones with the reason."""
    console = console or Console()
    table = Table(title="sweep summary")
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
