"""``nucleiseg report``: a study as the paper's Tables II and III, how close we are and why, and beyond.

Reads the runs of one MLflow experiment (a study), aggregates over finished seeds (median, IQR, min-max, n) per
configuration and writes Markdown + CSV tables and PNG + SVG figures to a folder:

- Tables II and III beside the published values (difference, and whether the paper's value lies within our
  seeds' range), the rank agreement of our medians with the paper's (Kendall's tau) and the paper's claims
  checked one by one. Only for studies that follow the paper's protocol on real data; any other study is
  reported without the published columns, with the differences listed.
- The sources of spread (TNBC test split vs training seed) when the study has several splits.
- Individual nuclei by head (AJI, AJI+, PQ, nuclei found / true) and the post-processing tuned on validation.
- Figures 7 and 8 (loss curves) and, on request, Figure 9 (predictions and nuclei on one test image).

Failed, killed and unfinished runs are counted in every row, never dropped silently. The medians also go back
to MLflow as one summary run per configuration (:mod:`nucleiseg.tracking.summary_runs`).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from nucleiseg.postprocess.instances import METHODS
from nucleiseg.tracking.classes import class_table
from nucleiseg.tracking.figures import plot_curves, prediction_figure
from nucleiseg.tracking.heads import head_ranking, head_table
from nucleiseg.tracking.paper import (
    COMPARED,
    PUBLISHED,
    check_claims,
    compare,
    paper_rows,
    rank_agreement,
    read_published,
)
from nucleiseg.tracking.report_folder import FIGURES, TABLE_FILES, check_out, install
from nucleiseg.tracking.spread import decompose, split_table
from nucleiseg.tracking.study import (
    COUNT_METRICS,
    INSTANCE_METRICS,
    TABLE2_METRICS,
    TABLE3_METRICS,
    ReportError,
    aggregate,
    load_runs,
    loss_curves,
    markdown_table,
    order_rows,
    paper_protocol,
    table_one_order,
)
from nucleiseg.tracking.summary_runs import write_summary_runs

if TYPE_CHECKING:
    from nucleiseg.inference.settings import InferenceSettings

__all__ = ["ReportError", "load_runs", "table_one_order", "write_report"]

log = logging.getLogger(__name__)


def _cell(row: pd.Series, name: str, compared: bool) -> str:
    value = row.get(name)
    if value is None or pd.isna(value):
        return "-"
    digits = 1 if name == "images_per_second" else 3
    text = f"{value:.{digits}f} [{row[f'{name}_min']:.{digits}f}-{row[f'{name}_max']:.{digits}f}]"
    if compared and not pd.isna(row.get(f"{name}_paper")):
        inside = "inside" if row[f"{name}_in_range"] else "outside"
        text += f" vs {row[f'{name}_paper']:.{digits}f}: {row[f'{name}_diff']:+.{digits}f} ({inside})"
    return text


def display(table: pd.DataFrame, metrics: tuple[str, ...], compared: bool) -> pd.DataFrame:
    """One cell per metric: ``median [min-max]`` and, compared, ``vs paper: diff (inside|outside)``."""
    shown = table[["configuration", "n", "n_failed", "n_killed", "n_other"]].copy()
    for name in metrics:
        if name in table:
            shown[name] = [_cell(row, name, compared) for _, row in table.iterrows()]
    return shown


def instance_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Median AJI, AJI+, PQ and object F1 per separation method, and nuclei found per true nucleus."""
    table = aggregate(runs, INSTANCE_METRICS + COUNT_METRICS)
    keep, found = ["configuration", "n"], {}
    for method in METHODS:
        if f"aji_{method}" not in table or table[f"aji_{method}"].isna().all():
            continue
        keep += [f"{name}_{method}" for name in ("aji", "aji_plus", "pq", "object_f1")]
        found[f"found_per_true_{method}"] = table[f"n_predicted_nuclei_{method}"] / table[f"n_true_nuclei_{method}"]
        keep.append(f"found_per_true_{method}")
    return pd.concat([table, pd.DataFrame(found, index=table.index)], axis=1)[keep]


def tuned_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The post-processing tuned on validation per configuration: each value with how many seeds chose it."""
    finished = runs[runs.finished]
    columns = sorted(c for c in finished.columns if c.startswith("tuned.") and c not in ("tuned.on",))
    rows = []
    for configuration, group in finished.groupby("configuration"):
        row = {"configuration": configuration, "n": len(group)}
        for column in columns:
            values = group[column].dropna()
            if len(values):
                counts = values.value_counts()
                row[column.removeprefix("tuned.")] = ", ".join(f"{v} (x{n})" for v, n in counts.items())
        rows.append(row)
    return order_rows(pd.DataFrame(rows)) if rows else pd.DataFrame(rows)


def _claims_markdown(claims: list[dict]) -> list[str]:
    lines = []
    for claim in claims:
        verdict = {True: "**true**", False: "**false**", None: "not checkable"}[claim["holds"]]
        lines.append(f"- {claim['claim']}: {verdict} ({claim['detail']})")
    return lines


def _sections(study: str, runs: pd.DataFrame, tables: dict, comparable: bool, differences: list[str]) -> list[str]:
    status = runs.status.value_counts().to_dict()
    finished = int(runs.finished.sum())
    lines = [
        f"# Report of study `{study}`",
        "",
        f"{len(runs)} runs: {finished} finished with all their outputs; by MLflow status {status}.",
        "",
    ]
    if comparable:
        lines += [
            "Every finished run follows the paper's protocol: each cell reads `median [min-max over seeds] vs "
            "published: ours - published (inside|outside our range)`.",
            "",
        ]
    else:
        lines += [
            "**Not the paper's protocol: no comparison with the published values.** Differences: "
            + ("; ".join(differences) or "unknown"),
            "",
        ]
    lines += ["## Table II: final losses", "", markdown_table(tables["table2_display"]), ""]
    lines += ["## Table III: test metrics on the held-out split", "", markdown_table(tables["table3_display"]), ""]
    if comparable:
        lines += [
            "## How close we are",
            "",
            "Rank agreement of our medians with the published ones (Kendall's tau over the rows present):",
            "",
            markdown_table(tables["agreement"]),
            "",
            "The paper's claims, checked against our runs:",
            "",
            *_claims_markdown(tables["claims"]),
            "",
        ]
    if not tables["spread"].empty:
        lines += [
            "## Sources of spread: test split vs training seed",
            "",
            "Standard deviations of the test Jaccard between TNBC test splits (of the split means) and within a "
            "split (pooled over training seeds):",
            "",
            markdown_table(tables["spread"]),
            "",
            markdown_table(tables["splits"]),
            "",
        ]
    lines += [
        "## Individual nuclei (beyond the paper)",
        "",
        "Median AJI, AJI+, PQ and object F1 (IoU > 0.5) per separation method, and nuclei found per true nucleus:",
        "",
        markdown_table(tables["instances"]),
        "",
    ]
    if not tables["heads"].empty:
        lines += [
            "## Ways of separating nuclei, by head",
            "",
            "Each head on its own separation method (binary: watershed; distance: Naylor's; hv: HoVer-Net's; "
            "stardist: StarDist's), median and IQR over seeds on the held-out split, nuclei found against annotated:",
            "",
            markdown_table(tables["heads"]),
            "",
            "Ranked by median AJI; a gap counts when it exceeds the larger IQR of the two heads. "
            + head_stability_line(tables["head_stability"]),
            "",
            markdown_table(tables["head_ranking"]),
            "",
        ]
    if not tables["classes"].empty:
        lines += [
            "## Nuclei by class",
            "",
            "Median over seeds, on the held-out split: PQ per class (CoNIC's, pooled over the split) and its mean "
            "mPQ+, PanNuke's mPQ (per image), HoVer-Net's detection F1 (F_d) and classification F1 per class (F_c), "
            "and the nuclei of each class found and annotated:",
            "",
            markdown_table(tables["classes"]),
            "",
        ]
    if not tables["tuned"].empty:
        lines += [
            "Post-processing tuned on validation (value and number of seeds):",
            "",
            markdown_table(tables["tuned"]),
            "",
        ]
    lines += [
        "## Figures",
        "",
        "![training loss](fig7_train_loss.png)",
        "",
        "![validation loss](fig8_val_loss.png)",
        "",
    ]
    stopped = runs[runs.status.isin(["FAILED", "KILLED"])]
    if not stopped.empty:
        lines += [
            "## Failed and killed runs",
            "",
            markdown_table(stopped[["run_name", "configuration", "seed", "status", "failure_reason"]]),
            "",
        ]
    return lines


def build_tables(runs: pd.DataFrame, published: pd.DataFrame | None) -> dict:
    table2, table3 = aggregate(runs, TABLE2_METRICS), aggregate(runs, TABLE3_METRICS)
    comparable = published is not None
    if comparable:
        table2, table3 = compare(table2, published, TABLE2_METRICS), compare(table3, published, TABLE3_METRICS)
    both = table3.merge(table2.drop(columns=["n", "n_failed", "n_killed", "n_other"]), on="configuration")
    ranking, stability = head_ranking(runs)
    return {
        "table2": table2,
        "table3": table3,
        "table2_display": display(table2, TABLE2_METRICS, comparable),
        "table3_display": display(table3, TABLE3_METRICS, comparable),
        "agreement": rank_agreement(both, COMPARED) if comparable else pd.DataFrame(),
        "claims": check_claims(table3, paper_rows(published)),
        "spread": decompose(runs),
        "splits": split_table(runs),
        "instances": instance_table(runs),
        "tuned": tuned_table(runs),
        "heads": head_table(runs),
        "head_ranking": ranking,
        "head_stability": stability,
        "classes": class_table(runs),
    }


def _write_tables(tables: dict, runs: pd.DataFrame, scratch: Path) -> list[str]:
    """The CSV files (a table without rows is not written: its section in report.md says so); returns which."""
    written = []
    for name, file in TABLE_FILES.items():
        if len(tables[name]):
            tables[name].to_csv(scratch / file, index=False)
            written.append(file)
    pd.DataFrame(tables["claims"]).to_csv(scratch / "claims.csv", index=False)
    runs.drop(columns=["checkpoint", "data_folder", "variant_key"], errors="ignore").to_csv(
        scratch / "runs.csv", index=False
    )
    return written


def write_report(
    tracking_uri: str,
    study: str,
    out: str | Path,
    overwrite: bool = False,
    figure_configurations: list[str] | None = None,
    figure_image: int = 0,
    published_path: Path = PUBLISHED,
    settings: InferenceSettings | None = None,
    summary_runs: bool = True,
) -> Path:
    """Write tables and figures of ``study`` into ``out`` (a new or empty folder, or with ``overwrite`` the
    folder of an earlier report, whose own files only are replaced); return it. ``settings``: how the prediction
    figure runs each checkpoint (needed with ``figure_configurations``)."""
    if figure_configurations and settings is None:
        raise ValueError("write_report: figure_configurations needs settings (the predict group's InferenceSettings)")
    out = Path(out).expanduser().resolve()
    earlier = check_out(out, overwrite)
    runs, client = load_runs(tracking_uri, study)
    if runs.empty or not runs.finished.any():
        counts = runs.status.value_counts().to_dict() if not runs.empty else {}
        raise ReportError(
            f"experiment {study!r} has no finished run with all its test outputs (runs by status: {counts or 'none'})"
        )
    comparable, differences = paper_protocol(runs)
    published = read_published(published_path) if comparable else None
    scratch = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        tables = build_tables(runs, published)
        _write_tables(tables, runs, scratch)
        for key, word in (("loss/train", "train"), ("loss/val", "val")):
            curves = loss_curves(client, runs, key)
            if curves.empty:  # studies logged before the loss keys moved under loss/
                curves = loss_curves(client, runs, f"{word}/loss")
            plot_curves(curves, f"{study}: {word} loss (median over seeds)", "loss", scratch / FIGURES[word])
        sections = _sections(study, runs, tables, comparable, differences)
        if figure_configurations:
            prediction_figure(runs, figure_configurations, figure_image, scratch / FIGURES["predictions"], settings)
            sections += ["![predictions and nuclei](fig9_predictions.png)", ""]
        (scratch / "report.md").write_text("\n".join(sections))
        if summary_runs:
            write_summary_runs(client, study, runs)
        install(scratch, out, earlier)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def head_stability_line(stability: dict[str, float]) -> str:
    """The ranking's stability over seeds, in words; with fewer than two seeds that every head finished, said so."""
    seeds, tau = stability.get("seeds", 0), stability.get("mean_kendall_tau", float("nan"))
    if seeds < 2 or tau != tau:
        return f"Ranking stability over seeds: not measured ({seeds:.0f} seed(s) finished by every head; needs 2)."
    return f"Ranking stability over {seeds:.0f} seeds (mean pairwise Kendall's tau of the per-seed rankings): {tau:.2f}"
