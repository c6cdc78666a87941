"""A typed study in the report: the scores of its nuclei by class (CoNIC's multi-class PQ, PanNuke's mPQ,
HoVer-Net's F_d and F_c, :mod:`nucleiseg.metrics.typed`), median over seeds per configuration."""

from __future__ import annotations

import re

import pandas as pd

SUMMARY = ("mpq_plus", "pannuke_mpq", "pannuke_bpq", "f_d", "type_accuracy", "multi_r2")
PER_CLASS = re.compile(r"^(pq|dq|sq|f_c|n_true|n_predicted)_(.+)$")


def typed_columns(columns: list[str]) -> list[str]:
    """The typed metrics among a runs table's columns (summaries and per class)."""
    return [c for c in columns if c in SUMMARY or (PER_CLASS.match(c) and not c.endswith(("_watershed",)))]


def class_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per configuration and class: median PQ (CoNIC, pooled over the split), F_c (HoVer-Net), nuclei found and
    annotated; with the configuration's median mPQ+, PanNuke mPQ and F_d. Empty for an untyped study."""
    finished = runs[runs.finished] if "finished" in runs else runs
    if "mpq_plus" not in finished or finished["mpq_plus"].isna().all():
        return pd.DataFrame()
    classes = sorted({m.group(2) for c in finished.columns if (m := PER_CLASS.match(c)) and m.group(1) == "f_c"})
    rows = []
    for configuration, group in finished.groupby("configuration"):
        for name in classes:
            rows.append(
                {
                    "configuration": configuration,
                    "class": name,
                    "n": len(group),
                    "pq": group.get(f"pq_{name}", pd.Series(dtype=float)).median(),
                    "f_c": group.get(f"f_c_{name}", pd.Series(dtype=float)).median(),
                    "nuclei_found": group.get(f"n_predicted_{name}", pd.Series(dtype=float)).median(),
                    "nuclei_true": group.get(f"n_true_{name}", pd.Series(dtype=float)).median(),
                    "mpq_plus": group["mpq_plus"].median(),
                    "pannuke_mpq": group.get("pannuke_mpq", pd.Series(dtype=float)).median(),
                    "f_d": group.get("f_d", pd.Series(dtype=float)).median(),
                }
            )
    return pd.DataFrame(rows)
