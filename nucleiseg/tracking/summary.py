"""One-screen summaries at the end of a run and of a sweep (rich tables)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

SHOWN = ("test/jaccard", "test/f1", "test/recall", "test/precision", "test/accuracy", "test/loss")


def print_run_summary(name: str, cfg: Any, metrics: dict, final: dict, run_dir: Path, run_id: str,
                      console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"run {name} (study {cfg.study})", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("train/loss", "val/loss"):
        if key in final:
            table.add_row(f"final {key}", f"{final[key]:.4f}")
    for key in SHOWN:
        if key in metrics:
            table.add_row(key, f"{metrics[key]:.4f}")
    table.add_row("train time", f"{metrics.get('train_seconds', float('nan')):.1f} s")
    console.print(table)
    console.print(f"checkpoints: {run_dir / 'checkpoints'}   MLflow run: {run_id}")


def sweep_rows(study_dir: Path) -> list[dict[str, Any]]:
    """One row per run folder of a study: finished (with test metrics), failed (with reason) or unfinished."""
    rows = []
    for run_dir in sorted(p for p in study_dir.iterdir() if p.is_dir() and (p / "run.json").is_file()):
        row: dict[str, Any] = {"run": run_dir.name}
        if (run_dir / "done.json").is_file():
            row.update(status="finished", **json.loads((run_dir / "done.json").read_text())["metrics"])
        elif (run_dir / "failed.json").is_file():
            row.update(status="failed", reason=json.loads((run_dir / "failed.json").read_text())["reason"])
        else:
            row.update(status="unfinished")
        rows.append(row)
    return rows


def print_sweep_summary(study_dir: Path, console: Console | None = None) -> list[dict[str, Any]]:
    console = console or Console()
    rows = sweep_rows(study_dir) if study_dir.is_dir() else []
    table = Table(title=f"sweep summary: {study_dir}")
    for column in ("run", "status", "jaccard", "f1", "time s"):
        table.add_column(column, justify="left" if column in ("run", "status") else "right")
    for row in rows:
        if row["status"] == "finished":
            table.add_row(row["run"], row["status"], f"{row.get('test/jaccard', float('nan')):.4f}",
                          f"{row.get('test/f1', float('nan')):.4f}", f"{row.get('train_seconds', 0):.0f}")
        else:
            table.add_row(row["run"], f"[red]{row['status']}[/red]", "", "", "", end_section=False)
            if row.get("reason"):
                table.add_row("", f"  {row['reason'][:100]}", "", "", "")
    console.print(table)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "failed", "unfinished")}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items()))
    return rows
