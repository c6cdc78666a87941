"""Our medians against the paper's Tables II and III: per row (difference, inside our seed range or not), over
the table (rank agreement), and the paper's claims checked one by one against our runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nucleiseg.tracking.study import TABLE2_METRICS, TABLE3_METRICS, row_label

PUBLISHED = Path(__file__).resolve().parents[2] / "experiments" / "paper" / "published.csv"
COMPARED = TABLE2_METRICS + TABLE3_METRICS
SCRATCH_AND_IMAGENET = ("resnet50", "resnet101", "resnext50_32x4d", "resnext101_32x8d", "densenet121", "densenet201")


def read_published(path: Path = PUBLISHED) -> pd.DataFrame | None:
    """The paper's values keyed by our row label (from the ``encoder`` and ``pretrained`` columns)."""
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    frame["configuration"] = [
        row_label(e, str(p).lower() == "true", "binary") for e, p in zip(frame.encoder, frame.pretrained, strict=True)
    ]
    return frame.set_index("configuration")


def compare(table: pd.DataFrame, published: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    """Add ``M_paper``, ``M_diff`` (ours - paper) and ``M_in_range`` (the paper's value within our seeds'
    min-max) for each metric ``M`` of ``table`` the paper reports."""
    table = table.copy()
    for name in metrics:
        if name not in table or name not in published:
            continue
        paper = table.configuration.map(published[name])
        table[f"{name}_paper"] = paper
        table[f"{name}_diff"] = table[name] - paper
        inside = (table[f"{name}_min"] <= paper) & (paper <= table[f"{name}_max"])
        table[f"{name}_in_range"] = inside.where(paper.notna() & table[name].notna())
    return table


def rank_agreement(table: pd.DataFrame, metrics: tuple[str, ...] = COMPARED) -> pd.DataFrame:
    """Kendall's tau between our medians and the published ones, over the rows that have both, per metric."""
    from scipy.stats import kendalltau

    rows = []
    for name in metrics:
        if f"{name}_paper" not in table:
            continue
        both = table[[name, f"{name}_paper"]].dropna()
        if len(both) < 3:
            rows.append({"metric": name, "n_rows": len(both), "kendall_tau": np.nan, "p_value": np.nan})
            continue
        tau, p_value = kendalltau(both[name], both[f"{name}_paper"])
        rows.append({"metric": name, "n_rows": len(both), "kendall_tau": float(tau), "p_value": float(p_value)})
    return pd.DataFrame(rows)


def _median(table: pd.DataFrame, label: str, metric: str) -> float | None:
    row = table[table.configuration == label]
    if row.empty or metric not in row or pd.isna(row[metric].iloc[0]):
        return None
    return float(row[metric].iloc[0])


def _best(table: pd.DataFrame, metric: str, label: str, claim: str, compared: list[str]) -> dict[str, Any]:
    """``label`` has the highest median ``metric`` among the paper's rows (binary heads). A ranking claim needs
    every configuration it ranks: with some missing it is not checkable, never true by default."""
    rows = table[table.configuration.isin(compared)].dropna(subset=[metric]) if metric in table else table.iloc[:0]
    missing = sorted(set(compared) - set(rows.configuration))
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        return {
            "claim": claim,
            "holds": None,
            "detail": f"not checkable: {len(rows)} of the {len(compared)} configurations have finished runs with "
            f"{metric} (missing: {shown})",
        }
    best = rows.loc[rows[metric].idxmax()]
    ours = _median(table, label, metric)
    detail = f"{label}: {ours:.3f}; best: {best.configuration} {best[metric]:.3f} (of {len(rows)} configurations)"
    return {"claim": claim, "holds": bool(best.configuration == label), "detail": detail}


def paper_rows(published: pd.DataFrame | None = None) -> list[str]:
    """The configurations the paper ranks: the rows of its Table III with values (13: the basic U-Net is not
    reported), from ``published`` or the transcription shipped with nucleiseg."""
    published = published if published is not None else read_published()
    return list(published.dropna(subset=["jaccard"]).index) if published is not None else []


def check_claims(table: pd.DataFrame, compared: list[str] | None = None) -> list[dict[str, Any]]:
    """The paper's conclusions, each true, false or not checkable here, with the numbers. ``compared``: the
    configurations its rankings are over (default: :func:`paper_rows`)."""
    compared = compared or paper_rows()
    claims = []
    for encoder in SCRATCH_AND_IMAGENET:
        scratch, imagenet = row_label(encoder, False, "binary"), row_label(encoder, True, "binary")
        a, b = _median(table, imagenet, "jaccard"), _median(table, scratch, "jaccard")
        claim = f"ImageNet weights beat random initialisation for {scratch} (median Jaccard)"
        if a is None or b is None:
            claims.append({"claim": claim, "holds": None, "detail": "not checkable: one of the two rows has no run"})
        else:
            claims.append({"claim": claim, "holds": a > b, "detail": f"ImageNet {a:.3f} vs scratch {b:.3f}"})
    densenet, unet_bn = row_label("densenet121", True, "binary"), row_label("unet_bn", False, "binary")
    claims.append(_best(table, "jaccard", densenet, "Pre-trained DenseNet-121 has the best Jaccard", compared))
    claims.append(_best(table, "images_per_second", unet_bn, "The modified U-Net is the fastest (images/s)", compared))
    claims.append(_best(table, "recall", unet_bn, "The modified U-Net has the best recall", compared))
    return claims
